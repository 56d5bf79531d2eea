//! Entry point, Xen ELF notes, hypercall page and the boot stack.
//!
//! Xen (x86_64) enters at the ENTRY note in guest kernel mode (CPL3, CS 0xe033, SS
//! 0xe02b) with rsi = VA of `start_info`, rsp = top of the builder's one-page boot stack,
//! and events masked. `_start` switches to a larger stack of its own at once.

use core::arch::global_asm;
use xen_abi::xen::StartInfo;

/// Size of the runtime's own kernel stack.
pub const STACK_SIZE: usize = 64 * 1024;

/// A page-aligned stack.
#[repr(C, align(4096))]
pub struct Stack<const N: usize>(pub [u8; N]);

/// The stack `_start` switches to.
#[no_mangle]
pub static mut PVT_BOOT_STACK: Stack<STACK_SIZE> = Stack([0; STACK_SIZE]);

/// `start_info` VA as handed over in rsi.
#[no_mangle]
pub static mut PVT_START_INFO: u64 = 0;

/// The `start_info` the builder passed (valid once `_start` ran).
pub fn start_info() -> &'static StartInfo {
    // SAFETY: written once by `_start` before any Rust code runs; the builder maps
    // start_info for the whole life of the domain.
    unsafe { &*(core::ptr::read_volatile(&raw const PVT_START_INFO) as *const StartInfo) }
}

// Entry and Xen ELF notes. Note layout (public/elfnote.h): namesz, descsz, type, "Xen\0",
// desc, each padded to 4 bytes.
global_asm!(
    r#"
    .section .text.entry, "ax", @progbits
    .global _start
    .type _start, @function
_start:
    cld
    mov [rip + PVT_START_INFO], rsi
    lea rsp, [rip + PVT_BOOT_STACK + {stack_size}]
    xor ebp, ebp
    mov rdi, rsi
    call {entry}
    ud2
    .size _start, . - _start

    .section .text.hypercall_page, "ax", @progbits
    .p2align 12
    .global pvt_hypercall_page
pvt_hypercall_page:
    .fill 4096, 1, 0xcc
    .size pvt_hypercall_page, 4096

    .macro PVT_XEN_NOTE type, kind, value
    .p2align 2
    .long 4
    .long 9992f - 9991f
    .long \type
    .asciz "Xen"
9991:
    .ifc \kind, str
    .asciz "\value"
    .else
    .quad \value
    .endif
9992:
    .p2align 2
    .endm

    .section .note.Xen, "a", @note
    PVT_XEN_NOTE {guest_os}, str, "pvkvm-test"
    PVT_XEN_NOTE {loader}, str, "generic"
    PVT_XEN_NOTE {xen_version}, str, "xen-3.0"
    PVT_XEN_NOTE {virt_base}, num, 0xffffffff80000000
    PVT_XEN_NOTE {paddr_offset}, num, 0
    PVT_XEN_NOTE {entry_note}, num, _start
    PVT_XEN_NOTE {hypercall_page}, num, pvt_hypercall_page
    PVT_XEN_NOTE {features}, str, "!writable_page_tables|pae_pgdir_above_4gb"
    PVT_XEN_NOTE {pae_mode}, str, "yes"
    .text
"#,
    stack_size = const STACK_SIZE,
    entry = sym pvt_rust_entry,
    guest_os = const xen_abi::elfnote::GUEST_OS,
    loader = const xen_abi::elfnote::LOADER,
    xen_version = const xen_abi::elfnote::XEN_VERSION,
    virt_base = const xen_abi::elfnote::VIRT_BASE,
    paddr_offset = const xen_abi::elfnote::PADDR_OFFSET,
    entry_note = const xen_abi::elfnote::ENTRY,
    hypercall_page = const xen_abi::elfnote::HYPERCALL_PAGE,
    features = const xen_abi::elfnote::FEATURES,
    pae_mode = const xen_abi::elfnote::PAE_MODE,
);

extern "C" {
    /// Defined by each binary through [`crate::test_kernel!`].
    fn pvt_main(si: &'static StartInfo);
}

/// First Rust code: checks the start_info magic, runs the scenario, reports SUCCESS.
extern "C" fn pvt_rust_entry(si: *const StartInfo) -> ! {
    // SAFETY: rsi at entry is the start_info VA, mapped by the builder.
    let si: &'static StartInfo = unsafe { &*si };
    let magic = xen_abi::xen::START_INFO_MAGIC;
    if si.magic[..magic.len()] != *magic {
        crate::fail!("start_info magic is not \"xen-3.0-x86_64\"");
    }
    // SAFETY: the binary defines pvt_main via test_kernel!.
    unsafe { pvt_main(si) };
    crate::console::succeed()
}
