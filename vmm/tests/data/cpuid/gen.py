#!/usr/bin/env python3
"""Generate the recorded-CPUID test files in this directory.

Every value is written from public facts (see README.md); this script is the
single place where the per-CPU facts live, each with a comment saying where it
came from or that it is an approximation.  Run: python3 gen.py
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def B(*bits):
    v = 0
    for b in bits:
        v |= 1 << b
    return v


def brand(s):
    """0x80000002..4 from a brand string (NUL padded to 48 bytes)."""
    raw = s.encode().ljust(48, b"\0")
    out = []
    for i in range(3):
        chunk = raw[16 * i:16 * i + 16]
        out.append(tuple(int.from_bytes(chunk[4 * j:4 * j + 4], "little") for j in range(4)))
    return out


def vendor_regs(v):
    r = v.encode()
    ebx, edx, ecx = (int.from_bytes(r[i:i + 4], "little") for i in (0, 4, 8))
    return ebx, ecx, edx


# XSAVE component table: (size, standard-format offset or None for supervisor)
XCOMP = {
    2: (256, 576),      # AVX (YMM_Hi128)
    3: (64, 960),       # MPX BNDREGS
    4: (64, 1024),      # MPX BNDCSR
    5: (64, 1088),      # AVX-512 opmask
    6: (512, 1152),     # AVX-512 ZMM_Hi256
    7: (1024, 1664),    # AVX-512 Hi16_ZMM
    8: (128, None),     # PT (supervisor)
    9: (8, 2688),       # PKRU (Intel offset)
    10: (8, None),      # PASID (supervisor)
    11: (16, None),     # CET_U (supervisor)
    12: (24, None),     # CET_S (supervisor)
    15: (808, None),    # Arch LBR (supervisor)
    17: (64, 2752),     # AMX XTILECFG
    18: (8192, 2816),   # AMX XTILEDATA
}
ALIGN64 = {17, 18}   # ECX[1]: 64-byte aligned in compacted format (SDM; approx. for 17)
XFD_OK = {18}        # ECX[2]: XFD supported for this component


def xsave_leaves(xcr0, xss, d1_eax, amd=False, enabled_xss=0, enabled_xcr0=None):
    """Leaf 0xD subleaves 0..max supported component.

    EBX of subleaf 0 = size for XCR0 as Linux sets it (all supported user
    components), EBX of subleaf 1 = compacted size for XCR0|enabled_xss.
    """
    comp = dict(XCOMP)
    if amd:
        # AMD standard-format offsets (Zen4/Zen5 dumps): no MPX hole, AVX-512 packed
        # after YMM, PKRU at 0x980.
        comp[5] = (64, 0x340)
        comp[6] = (512, 0x380)
        comp[7] = (1024, 0x580)
        comp[9] = (8, 0x980)
    if enabled_xcr0 is None:
        enabled_xcr0 = xcr0
    user = [i for i in range(2, 64) if xcr0 >> i & 1]
    maxsize = max(comp[i][1] + comp[i][0] for i in user)
    cursize = max([576] + [comp[i][1] + comp[i][0] for i in user if enabled_xcr0 >> i & 1])
    leaves = [(0xD, 0, xcr0 & 0xffffffff, cursize, maxsize, xcr0 >> 32)]
    size = 576
    for i in range(2, 64):
        if (enabled_xcr0 | enabled_xss) >> i & 1:
            if i in ALIGN64:
                size = (size + 63) & ~63
            size += comp[i][0]
    leaves.append((0xD, 1, d1_eax, size, xss & 0xffffffff, xss >> 32))
    top = max(i for i in range(64) if (xcr0 | xss) >> i & 1)
    for i in range(2, top + 1):
        if xcr0 >> i & 1:
            sz, off = comp[i]
            ecx = (2 if i in ALIGN64 else 0) | (4 if i in XFD_OK else 0)
            leaves.append((0xD, i, sz, off, ecx, 0))
        elif xss >> i & 1:
            sz, _ = comp[i]
            leaves.append((0xD, i, sz, 0, 1, 0))
        else:
            leaves.append((0xD, i, 0, 0, 0, 0))
    return leaves


def emit(name, header, leaves, msrs=()):
    leaves = sorted(leaves, key=lambda l: (l[0], l[1]))
    seen = set()
    for l in leaves:
        assert (l[0], l[1]) not in seen, (name, hex(l[0]), l[1])
        seen.add((l[0], l[1]))
    with open(os.path.join(HERE, name), "w") as f:
        for h in header:
            f.write("# " + h + "\n" if h else "#\n")
        for l in leaves:
            f.write("0x%08x 0x%08x 0x%08x 0x%08x 0x%08x 0x%08x\n" % tuple(x & 0xffffffff for x in l))
        for idx, val in msrs:
            f.write("msr 0x%08x 0x%016x\n" % (idx, val))


def fill_basic(leaves, maxleaf):
    """Add all-zero subleaf-0 entries for reserved basic leaves up to max."""
    have = {l[0] for l in leaves}
    for i in range(0, maxleaf + 1):
        if i not in have:
            leaves.append((i, 0, 0, 0, 0, 0))


def fill_ext(leaves, maxleaf):
    have = {l[0] for l in leaves}
    for i in range(0x80000000, maxleaf + 1):
        if i not in have:
            leaves.append((i, 0, 0, 0, 0, 0))


# ---------------------------------------------------------------- Intel ----
L1_EDX_INTEL = 0xBFEBFBFF   # FPU..PBE incl. MCE(7) MCA(14) DS ACPI SS HTT TM PBE
# leaf 1 ECX: SSE3 PCLMUL DTES64 MONITOR DSCPL VMX SMX EIST TM2 SSSE3 SDBG FMA CX16
# XTPR PDCM PCID DCA SSE4.1 SSE4.2 X2APIC MOVBE POPCNT TSC_DEADLINE AES XSAVE
# OSXSAVE AVX F16C RDRAND; HYPERVISOR (31) clear.
L1_ECX_XEON = B(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 17, 18, 19, 20,
                21, 22, 23, 24, 25, 26, 27, 28, 29, 30)
E1_ECX_INTEL = B(0, 5, 8)              # LAHF_LM, ABM/LZCNT, PREFETCHW
E1_EDX_INTEL = B(11, 20, 26, 27, 29)   # SYSCALL NX PAGE1GB RDTSCP LM

# IA32_ARCH_CAPABILITIES bits (Xen cpufeatureset.h word 16/17, Linux msr-index.h)
AC = dict(RDCL_NO=0, IBRS_ALL=1, RSBA=2, SKIP_L1DFL=3, SSB_NO=4, MDS_NO=5,
          PSCHANGE_MC_NO=6, TSX_CTRL=7, TAA_NO=8, MCU_CONTROL=9,
          MISC_PKG_CTRL=10, ENERGY_FILTERING=11, DOITM=12, SBDR_SSDP_NO=13,
          FBSDP_NO=14, PSDP_NO=15, FB_CLEAR=17, FB_CLEAR_CTRL=18, RRSBA=19,
          BHI_NO=20, XAPIC_STATUS=21, PBRSB_NO=24, GDS_CTRL=25, GDS_NO=26,
          RFDS_NO=27, RFDS_CLEAR=28)


def ac(*names):
    return B(*(AC[n] for n in names))


def intel_common(sig, lp_field, brandstr, maxbasic, c4, l2leaf6, phys, virt, e8_ebx):
    L = []
    eb, ec, ed = vendor_regs("GenuineIntel")
    L.append((0, 0, maxbasic, eb, ec, ed))
    L.append((1, 0, sig, (lp_field << 16) | (8 << 8), L1_ECX_XEON, L1_EDX_INTEL))
    for i, regs in enumerate(c4):
        L.append((4, i) + regs)
    L.append((4, len(c4), 0, 0, 0, 0))
    L.append((5, 0, 0x40, 0x40, 0x3, 0x00002020))
    L.append((0x80000000, 0, 0x80000008, 0, 0, 0))
    L.append((0x80000001, 0, 0, 0, E1_ECX_INTEL, E1_EDX_INTEL))
    for i, r in enumerate(brand(brandstr)):
        L.append((0x80000002 + i, 0) + r)
    L.append((0x80000005, 0, 0, 0, 0, 0))
    L.append((0x80000006, 0, 0, 0, l2leaf6, 0))
    L.append((0x80000007, 0, 0, 0, 0, B(8)))       # invariant TSC
    L.append((0x80000008, 0, (virt << 8) | phys, e8_ebx, 0, 0))
    return L


def topo_b(leaf, threads_shift, threads):
    return [(leaf, 0, 1, 2, 0x100, 0),
            (leaf, 1, threads_shift, threads, 0x201, 0),
            (leaf, 2, 0, 0, 2, 0)]


def gen_skx_clx(fname, cascade):
    if cascade:
        sig, model_name, brandstr = 0x00050657, "Intel Xeon Platinum 8280 (Cascade Lake-SP, 28C/56T)", \
            "Intel(R) Xeon(R) Platinum 8280 CPU @ 2.70GHz"
    else:
        sig, model_name, brandstr = 0x00050654, "Intel Xeon Platinum 8180 (Skylake-SP, 28C/56T)", \
            "Intel(R) Xeon(R) Platinum 8180 CPU @ 2.50GHz"
    c4 = [(0x7C004121, 0x01C0003F, 0x0000003F, 0),   # L1D 32K 8-way
          (0x7C004122, 0x01C0003F, 0x0000003F, 0),   # L1I 32K 8-way
          (0x7C004143, 0x03C0003F, 0x000003FF, 0),   # L2 1M 16-way
          (0x7C0FC163, 0x0280003F, 0x0000DFFF, 4)]   # L3 38.5M 11-way, complex idx
    L = intel_common(sig, 0x40, brandstr, 0x16, c4, 0x01006040, 46, 48, 0)
    L.append((2, 0, 0x76036301, 0x00F0B5FF, 0, 0x00C30000))
    L.append((6, 0, 0x00000077, 0x2, 0x9, 0))      # approx: DTS, turbo, ARAT, PLN, ECMD, PTM, HWP base
    # leaf 7.0
    ebx = B(0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
            23, 24, 25, 28, 30, 31)   # no SGX(2), SHA(29), IFMA(21) on SKX/CLX
    ecx = B(3, 4)                        # PKU, OSPKE
    if cascade:
        ecx |= B(11)                     # AVX512_VNNI
    edx = B(10, 26, 27, 28, 29, 31)     # MD_CLEAR IBRSB STIBP L1D_FLUSH ARCH_CAPS SSBD
    L.append((7, 0, 0, ebx, ecx, edx))
    L.append((0xA, 0, 0x07300404, 0, 0, 0x00000603))
    L += topo_b(0xB, 6, 56)
    # XCR0: x87 SSE AVX BNDREGS BNDCSR opmask ZMM_Hi256 Hi16_ZMM PKRU; XSS: PT
    L += xsave_leaves(0x2FF, 0x100, B(0, 1, 2, 3))
    L.append((0xF, 0, 0, 0xBF, 0, 0x2))            # approx RMID count
    L.append((0xF, 1, 0, 0x0001C000, 0xBF, 0x7))   # approx conversion factor
    L.append((0x10, 0, 0, 0xA, 0, 0))              # L3 CAT + MBA
    L.append((0x10, 1, 0xA, 0x00000600, 0x4, 0xF)) # 11-bit CBM, CDP, 16 COS
    L.append((0x10, 2, 0, 0, 0, 0))
    L.append((0x10, 3, 0x59, 0, 0x4, 0x7))         # MBA: max 90%, linear, 8 COS
    L.append((0x12, 0, 0, 0, 0, 0))                # no SGX on Purley
    L.append((0x14, 0, 0x1, 0xF, 0x7, 0))
    L.append((0x14, 1, 0x02490002, 0x003F3FFF, 0, 0))
    if cascade:
        L.append((0x15, 0, 0x2, 0xD8, 0, 0))       # TSC 2.7 GHz / crystal not enumerated
        L.append((0x16, 0, 2700, 4000, 100, 0))
        # RRSBA: enumerated on eIBRS parts since the Aug-2023 microcode (Xen spec_ctrl.c)
        msr = ac("RDCL_NO", "IBRS_ALL", "SKIP_L1DFL", "MDS_NO", "TSX_CTRL",
                 "FB_CLEAR", "FB_CLEAR_CTRL", "RRSBA", "GDS_CTRL")
    else:
        L.append((0x15, 0, 0x2, 0xC8, 0, 0))
        L.append((0x16, 0, 2500, 3800, 100, 0))
        # non-eIBRS Skylake uarch: RSBA (Xen spec_ctrl.c: no ucode has ARCH_CAPS without RSBA|EIBRS)
        msr = ac("RSBA", "GDS_CTRL")
    fill_basic(L, 0x16)
    fam = "06h / model 55h / stepping %d" % (sig & 0xF)
    hdr = [model_name,
           "family %s (CPUID.1.EAX 0x%08x), vendor GenuineIntel" % (fam, sig),
           "CPU 0 (APIC id 0) of a 2-socket-capable SKU; bare metal, Linux (CR4.OSXSAVE, CR4.PKE set), current microcode",
           "sources: Intel SDM vol.2 CPUID + Intel ISE; Xen xen/include/public/arch-x86/cpufeatureset.h (bit positions);",
           "  libcpuid tests/intel/x86-64/skylake/intel-core-i9-7980xe / i9-10980xe dumps (same core: caches, 0xA, 0xD, 0x14);",
           "  archspec-json linux-rhel7-skylake_avx512 / linux-centos7-cascadelake /proc/cpuinfo flags; Xen spec_ctrl.c;",
           "  QEMU Skylake-Server/Cascadelake-Server models (feature set, arch-capabilities props); Linux msr-index.h.",
           "approximations: leaf 6, 0xF/0x10 RDT counts, 0x15/0x16 clock values; see README.md"]
    if cascade:
        hdr.append("TSX shown enabled (power-on TSX_CTRL=0); Linux tsx=off would hide HLE/RTM via TSX_CTRL.CPUID_CLEAR")
    emit(fname, hdr, L, [(0x10A, msr)])


def gen_icx():
    sig = 0x000606A6
    c4 = [(0xFC004121, 0x02C0003F, 0x0000003F, 0),   # L1D 48K 12-way
          (0xFC004122, 0x01C0003F, 0x0000003F, 0),   # L1I 32K 8-way
          (0xFC004143, 0x04C0003F, 0x000003FF, 0),   # L2 1.25M 20-way
          (0xFC1FC163, 0x02C0003F, 0x00013FFF, 4)]   # L3 60M 12-way
    L = intel_common(sig, 0x80, "Intel(R) Xeon(R) Platinum 8380 CPU @ 2.30GHz",
                     0x1B, c4, 0x05007040, 46, 57, B(9))   # 0x80000008.EBX WBNOINVD
    L.append((2, 0, 0x00FEFF01, 0x000000F0, 0, 0))
    L.append((6, 0, 0x00000077, 0x2, 0x9, 0))
    ebx = B(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16, 17, 18, 19, 20, 21,
            23, 24, 25, 28, 29, 30, 31)   # SGX, HLE/RTM, no MPX(14)
    ecx = B(1, 2, 3, 4, 6, 8, 9, 10, 11, 12, 13, 14, 16, 22, 30)  # VBMI UMIP PKU OSPKE VBMI2 GFNI VAES VPCLMUL VNNI BITALG TME VPOPCNTDQ LA57 RDPID SGX_LC
    edx = B(4, 10, 18, 26, 27, 28, 29, 30, 31)   # FSRM MD_CLEAR PCONFIG IBRSB STIBP L1D_FLUSH ARCH_CAPS CORE_CAPS SSBD
    L.append((7, 0, 0, ebx, ecx, edx))
    L.append((0xA, 0, 0x08300805, 0, 0, 0x00008603))
    L += topo_b(0xB, 7, 80)
    L += xsave_leaves(0x2E7, 0x100, B(0, 1, 2, 3))
    L.append((0xF, 0, 0, 0xFF, 0, 0x2))
    L.append((0xF, 1, 0, 0x0001A000, 0xFF, 0x7))
    L.append((0x10, 0, 0, 0xA, 0, 0))
    L.append((0x10, 1, 0xB, 0x00000C00, 0x4, 0xF))
    L.append((0x10, 2, 0, 0, 0, 0))
    L.append((0x10, 3, 0x59, 0, 0x4, 0x7))
    L += sgx_leaves(0x2E7)
    L.append((0x14, 0, 0x1, 0x2F, 0x7, 0))
    L.append((0x14, 1, 0x02490002, 0x003F3FFF, 0, 0))
    L.append((0x15, 0, 0x2, 0xB8, 0x017D7840, 0))     # 25 MHz crystal, 2.3 GHz TSC
    L.append((0x16, 0, 2300, 3400, 100, 0))
    L += tlb18()
    L.append((0x1B, 0, 0x1, 0x1, 0, 0))   # PCONFIG: MKTME target (approx)
    L.append((0x1B, 1, 0, 0, 0, 0))
    fill_basic(L, 0x1B)
    msr = ac("RDCL_NO", "IBRS_ALL", "SKIP_L1DFL", "MDS_NO", "PSCHANGE_MC_NO",
             "TSX_CTRL", "TAA_NO", "DOITM", "FB_CLEAR", "FB_CLEAR_CTRL", "RRSBA", "GDS_CTRL")
    emit("intel-ice-lake-sp.txt", [
        "Intel Xeon Platinum 8380 (Ice Lake-SP, 40C/80T)",
        "family 06h / model 6Ah / stepping 6 (CPUID.1.EAX 0x%08x), vendor GenuineIntel" % sig,
        "CPU 0 (APIC id 0) of a 2-socket-capable SKU; bare metal, Linux (CR4.OSXSAVE, CR4.PKE set), current microcode",
        "sources: Intel SDM vol.2 CPUID + Intel ISE; Xen cpufeatureset.h; QEMU Icelake-Server(-v3 arch-capabilities props);",
        "  libcpuid sunny-cove (i7-1065G7) dump for core cache/XSAVE layout; Linux msr-index.h / hw-vuln docs.",
        "approximations: leaf 6, 0xF/0x10 RDT, 0x12 EPC section, 0x18 TLB entries, 0x1B, 0x80000006; see README.md",
        "TSX (HLE/RTM) shown enabled as on QEMU Icelake-Server-v1; Linux tsx=off would hide them"], L, [(0x10A, msr)])


def sgx_leaves(xfrm):
    return [(0x12, 0, 0x3, 0x1, 0, 0x0000381F),        # SGX1+SGX2, EXINFO, max enclave 2^31/2^56
            (0x12, 1, 0x000000B6, 0, xfrm & 0xffffffff, xfrm >> 32),
            (0x12, 2, 0x80000001, 0x00000040, 0xC0000001, 0x0000000F),  # EPC section (approx)
            (0x12, 3, 0, 0, 0, 0)]


def tlb18():
    # Deterministic address translation parameters (approximate entry counts)
    return [(0x18, 0, 0x8, 0, 0, 0),
            (0x18, 1, 0, 0x00080001, 0x20, 0x00004022),
            (0x18, 2, 0, 0x00080006, 0x4, 0x00004022),
            (0x18, 3, 0, 0x0010000F, 0x1, 0x00004125),
            (0x18, 4, 0, 0x00040001, 0x10, 0x00004024),
            (0x18, 5, 0, 0x00040006, 0x8, 0x00004024),
            (0x18, 6, 0, 0x00080008, 0x1, 0x00004124),
            (0x18, 7, 0, 0x00080007, 0x80, 0x00004043),
            (0x18, 8, 0, 0x00080009, 0x80, 0x00004043)]


def gen_spr():
    sig = 0x000806F8
    c4 = [(0xFC004121, 0x02C0003F, 0x0000003F, 0),   # L1D 48K 12-way
          (0xFC004122, 0x01C0003F, 0x0000003F, 0),   # L1I 32K 8-way
          (0xFC004143, 0x03C0003F, 0x000007FF, 0),   # L2 2M 16-way
          (0xFC1FC163, 0x0380003F, 0x0001BFFF, 4)]   # L3 105M 15-way
    L = intel_common(sig, 0x80, "Intel(R) Xeon(R) Platinum 8480+",
                     0x20, c4, 0x08007040, 46, 57, B(9))
    L.append((2, 0, 0x00FEFF01, 0x000000F0, 0, 0))
    L.append((6, 0, 0x00000077, 0x2, 0x9, 0))
    ebx = B(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16, 17, 18, 19, 20, 21,
            23, 24, 25, 28, 29, 30, 31)
    ecx = B(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 22, 24, 25, 27, 28, 29, 30, 31)
    # VBMI UMIP PKU OSPKE WAITPKG VBMI2 CET_SS GFNI VAES VPCLMUL VNNI BITALG TME
    # VPOPCNTDQ LA57 RDPID BUS_LOCK_DETECT CLDEMOTE MOVDIRI MOVDIR64B ENQCMD SGX_LC PKS
    edx = B(4, 5, 10, 14, 16, 18, 19, 20, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31)
    # FSRM UINTR MD_CLEAR SERIALIZE TSXLDTRK PCONFIG ARCH_LBR CET_IBT AMX_BF16
    # AVX512_FP16 AMX_TILE AMX_INT8 IBRSB STIBP L1D_FLUSH ARCH_CAPS CORE_CAPS SSBD
    L.append((7, 0, 2, ebx, ecx, edx))
    L.append((7, 1, B(4, 5, 10, 11, 12), 0, 0, 0))   # AVX_VNNI AVX512_BF16 FZRM FSRS FSRCS
    L.append((7, 2, 0, 0, 0, B(0, 1, 2, 4)))          # PSFD IPRED_CTRL RRSBA_CTRL BHI_CTRL
    L.append((0xA, 0, 0x08300805, 0, 0xF, 0x00008604))
    L += topo_b(0xB, 7, 112)
    L += topo_b(0x1F, 7, 112)
    L += xsave_leaves(0x602E7, B(8, 10, 11, 12, 15), B(0, 1, 2, 3, 4))
    L.append((0xF, 0, 0, 0xFF, 0, 0x2))
    L.append((0xF, 1, 0, 0x0001A000, 0xFF, 0x7))
    L.append((0x10, 0, 0, 0xE, 0, 0))                 # L3 CAT, L2 CAT, MBA
    L.append((0x10, 1, 0xE, 0x00006000, 0x4, 0xF))
    L.append((0x10, 2, 0xF, 0, 0x4, 0x7))
    L.append((0x10, 3, 0x59, 0, 0x4, 0xF))
    L += sgx_leaves(0x602E7)
    L.append((0x14, 0, 0x1, 0x5F, 0x7, 0))
    L.append((0x14, 1, 0x02490002, 0x003F003F, 0, 0))
    L.append((0x15, 0, 0x2, 0xA0, 0x017D7840, 0))     # 25 MHz crystal, 2.0 GHz TSC
    L.append((0x16, 0, 2000, 3800, 100, 0))
    L += tlb18()
    L.append((0x1B, 0, 0x1, 0x1, 0, 0))
    L.append((0x1B, 1, 0, 0, 0, 0))
    L.append((0x1C, 0, 0x4000000F, 0x7, 0x7, 0))     # arch LBR depths 8..32 (approx)
    L.append((0x1D, 0, 0x1, 0, 0, 0))                 # AMX palette 1
    L.append((0x1D, 1, 0x04002000, 0x00080040, 0x10, 0))
    L.append((0x1E, 0, 0, 0x00004010, 0, 0))          # TMUL maxk=16 maxn=64
    fill_basic(L, 0x20)
    msr = ac("RDCL_NO", "IBRS_ALL", "SKIP_L1DFL", "MDS_NO", "PSCHANGE_MC_NO",
             "TSX_CTRL", "TAA_NO", "DOITM", "SBDR_SSDP_NO", "FBSDP_NO", "PSDP_NO",
             "RRSBA", "XAPIC_STATUS", "PBRSB_NO", "GDS_NO", "RFDS_NO")
    emit("intel-sapphire-rapids.txt", [
        "Intel Xeon Platinum 8480+ (Sapphire Rapids, 56C/112T)",
        "family 06h / model 8Fh / stepping 8 (CPUID.1.EAX 0x%08x), vendor GenuineIntel" % sig,
        "CPU 0 (APIC id 0) of a 2-socket-capable SKU; bare metal, Linux (CR4.OSXSAVE, CR4.PKE set), current microcode",
        "sources: Bochs bochs/cpu/cpudb/intel/sapphire_rapids.cc (sig, leaf 2/4/7.2/0x18 values); Intel SDM + ISE (AMX 0x1D/0x1E,",
        "  XSAVE AMX layout); archspec-json tests/targets/linux-unknown-sapphirerapids (/proc/cpuinfo of an 8480+);",
        "  Xen cpufeatureset.h + spec_ctrl.c (RSBA/RRSBA rules); QEMU SapphireRapids model; Linux msr-index.h.",
        "approximations: leaf 6, 0xF/0x10 RDT, 0x12 EPC, 0x18 entries, 0x1B, 0x1C, 0x1F (no die level), 0xD.1 XSS set; README.md"],
        L, [(0x10A, msr)])


# ------------------------------------------------------------------ AMD ----
def amd_common(sig, lp, brandstr, maxext, e1_ebx, pcid=True):
    L = []
    eb, ec, ed = vendor_regs("AuthenticAMD")
    L.append((0, 0, 0x10, eb, ec, ed))
    # leaf 1 ECX: SSE3 PCLMUL MONITOR SSSE3 FMA CX16 SSE4.1 SSE4.2 X2APIC MOVBE
    # POPCNT AES XSAVE OSXSAVE AVX F16C RDRAND (no hypervisor bit)
    ecx = B(0, 1, 3, 9, 12, 13, 19, 20, 21, 22, 23, 25, 26, 27, 28, 29, 30)
    if pcid:   # EPYC Milan/Genoa enumerate PCID (lscpu of EPYC 7763 / 9654); client Zen3/4 do not
        ecx |= B(17)
    L.append((1, 0, sig, (lp << 16) | (8 << 8), ecx, 0x178BFBFF))
    L.append((0x80000000, 0, maxext, eb, ec, ed))
    L.append((0x80000001, 0, sig, e1_ebx, 0x75C237FF, 0x2FD3FBFF))
    for i, r in enumerate(brand(brandstr.ljust(47))):
        L.append((0x80000002 + i, 0) + r)
    L.append((6, 0, 0x4, 0, 0x1, 0))
    return L


def amd_topo(L, shift, threads, ext26=False):
    L += topo_b(0xB, shift, threads)
    L.append((0x8000001E, 0, 0, 0x00000100, 0, 0))   # APIC 0, core 0, 2 threads/core, node 0


def amd_rdt(L, rmid=0xFF, zen4=False):
    L.append((0xF, 0, 0, rmid, 0, 0x2))
    L.append((0xF, 1, 0x14 if zen4 else 0, 0x40, rmid, 0x7))
    L.append((0x10, 0, 0, 0x2, 0, 0))
    L.append((0x10, 1, 0xF, 0, 0x4, 0xF))


def amd_l3_1d(L, l2, l3):
    """0x8000001D: l2=(EBX, ECX), l3=(EAX, EBX, ECX)."""
    L.append((0x8000001D, 0, 0x00004121, l2[2] if len(l2) > 2 else 0x01C0003F, 0x3F, 0))
    L.append((0x8000001D, 1, 0x00004122, 0x01C0003F, 0x3F, 0))
    L.append((0x8000001D, 2, 0x00004143, l2[0], l2[1], 0x2))
    L.append((0x8000001D, 3, l3[0], l3[1], l3[2], 0x1))
    L.append((0x8000001D, 4, 0, 0, 0, 0))


def amd_hdr(name, fam, model, step, sig, extra_sources, approx):
    return [name,
            "family %02Xh / model %02Xh / stepping %d (CPUID.1.EAX 0x%08x), vendor AuthenticAMD" % (fam, model, step, sig),
            "CPU 0 (APIC id 0) of a 2-socket-capable SKU; bare metal, Linux (CR4.OSXSAVE, CR4.PKE set), current microcode",
            "sources: AMD APM vol.3 appendix E + family PPRs; Xen cpufeatureset.h (bit names/positions) and",
            "  xen/arch/x86/spec_ctrl.c (SBPB/IBPB_BRTYPE are synthesised, not enumerated, on Fam19h);"] + extra_sources + \
           ["approximations: " + approx + "; see README.md"]


def gen_rome():
    sig = 0x00830F10
    L = amd_common(sig, 128, "AMD EPYC 7742 64-Core Processor", 0x80000020, 0x40000000,
                   pcid=False)
    L.append((5, 0, 0x40, 0x40, 0x3, 0x11))
    # 7.0 EBX: FSGSBASE BMI1 AVX2 SMEP BMI2 PQM PQE RDSEED ADX SMAP CLFLUSHOPT CLWB SHA
    L.append((7, 0, 0, 0x219C91A9, B(2, 22), 0))       # ECX: UMIP RDPID (no PKU on Zen2)
    amd_topo(L, 7, 128)
    # Zen2 enumerates PKRU in XCR0 (0x207, as in the 3950X/3955WX dumps) but has no PKU,
    # so Linux leaves PKRU out of XCR0: 0xD.0 EBX/0xD.1 EBX are for XCR0 = 0x7.
    L += xsave_leaves(0x207, 0, B(0, 1, 2, 3), amd=True, enabled_xcr0=0x7)
    amd_rdt(L)
    L.append((0x80000005, 0, 0xFF40FF40, 0xFF40FF40, 0x20080140, 0x20080140))
    L.append((0x80000006, 0, 0x48006400, 0x68006400, 0x02006140, 0x08009140))  # L3 256MB total
    L.append((0x80000007, 0, 0, 0x1B, 0, 0x6799))
    # Threadripper PRO 3955WX (same Rome CCD/IOD, SP3r3-class): CLZERO IRPERF XSAVEERPTR RDPRU
    # MBE? WBNOINVD IBPB INT_WBINVD STIBP IBRS_FAST IBRS_SAME_MODE AMD_PPIN AMD_SSBD (no IBRS bit 14)
    e8 = 0x018CB757
    L.append((0x80000008, 0, 0x00003030, e8, 0x0000707F, 0x00010000))
    L.append((0x8000000A, 0, 0x1, 0x8000, 0, 0x0013BCFF))
    L.append((0x80000019, 0, 0xF040F040, 0, 0, 0))
    L.append((0x8000001A, 0, 0x6, 0, 0, 0))
    L.append((0x8000001B, 0, 0x3FF, 0, 0, 0))
    amd_l3_1d(L, (0x01C0003F, 0x3FF), (0x0001C163, 0x03C0003F, 0x3FFF))
    L.append((0x8000001F, 0, 0x0001000F, 0x0000016F, 0x1FD, 0x1))   # SME SEV SEV-ES, C-bit 47
    L.append((0x80000020, 0, 0, 0x2, 0, 0))
    L.append((0x80000020, 1, 0xF, 0, 0, 0xF))
    fill_basic(L, 0x10)
    fill_ext(L, 0x80000020)
    emit("amd-zen2-rome.txt", amd_hdr("AMD EPYC 7742 (Rome, Zen 2, 64C/128T)", 0x17, 0x31, 0, sig,
         ["  libcpuid tests/amd/zen2 Ryzen 9 3950X + Threadripper PRO 3955WX dumps (same Rome CCD/IOD: 0x80000008.EBX",
          "  incl. AMD_PPIN, 0x80000001.EBX PkgType 4, 0x8000001F SEV leaf, caches 0x80000005/6/1D);",
          "  QEMU EPYC-Rome model (server feature set)."],
         "0x80000001.EBX PkgType, 0x8000001E.ECX, 0x8000001F, 0x80000020, RDT counts"), L)


def gen_milan():
    sig = 0x00A00F11
    L = amd_common(sig, 128, "AMD EPYC 7763 64-Core Processor", 0x80000023, 0x40000000)
    L.append((5, 0, 0x40, 0x40, 0x3, 0x11))
    # + ERMS INVPCID ; ECX UMIP PKU OSPKE CET_SS VAES VPCLMULQDQ RDPID ; EDX FSRM
    L.append((7, 0, 0, 0x219C97A9, B(2, 3, 4, 7, 9, 10, 22), B(4)))
    amd_topo(L, 7, 128)
    L += xsave_leaves(0x207, 0x1800, B(0, 1, 2, 3), amd=True)
    amd_rdt(L)
    L.append((0x80000005, 0, 0xFF40FF40, 0xFF40FF40, 0x20080140, 0x20080140))
    L.append((0x80000006, 0, 0x48002200, 0x68004200, 0x02006140, 0x08009140))
    L.append((0x80000007, 0, 0, 0x3B, 0, 0x6799))
    e8 = 0x111EF657 | B(3, 23)     # + INVLPGB, AMD_PPIN (server)
    L.append((0x80000008, 0, 0x00003030, e8, 0x0000707F, 0x00010007))
    L.append((0x8000000A, 0, 0x1, 0x8000, 0, 0x001BBCFF))
    L.append((0x80000019, 0, 0xF040F040, 0xF0400000, 0, 0))
    L.append((0x8000001A, 0, 0x6, 0, 0, 0))
    L.append((0x8000001B, 0, 0x3FD, 0, 0, 0))
    amd_l3_1d(L, (0x01C0003F, 0x3FF), (0x0003C163, 0x03C0003F, 0x7FFF))
    L.append((0x8000001F, 0, 0x00017C3F, 0x00004073, 0x1FD, 0x1))  # SME SEV ES SNP VMPL ... (approx)
    L.append((0x80000020, 0, 0, 0x6, 0, 0))
    L.append((0x80000020, 1, 0xF, 0, 0, 0xF))
    L.append((0x80000020, 2, 0xB, 0, 0, 0xF))
    # NO_NEST_BP, LFENCE_DISPATCH, SMM_PG_CFG_LOCK, NSCB (later Zen3 microcode/AGESA; early
    # 5950X dumps lack NSCB).  SBPB/IBPB_BRTYPE are not enumerated on Fam19h (Xen synthesises).
    L.append((0x80000021, 0, B(0, 2, 3, 6), 0, 0, 0))
    fill_basic(L, 0x10)
    fill_ext(L, 0x80000023)
    emit("amd-zen3-milan.txt", amd_hdr("AMD EPYC 7763 (Milan, Zen 3, 64C/128T)", 0x19, 0x01, 1, sig,
         ["  libcpuid tests/amd/zen3 Ryzen 9 5950X / 5800X3D dumps (same Zen3 core: 7.0, 0x80000008.EBX, 0x80000021.EAX);",
          "  archspec-json linux-ubuntu20.04-zen3 cpuinfo; Xen amd.c (Zen3 predates BTC_NO: not enumerated);",
          "  QEMU EPYC-Milan model (server feature set)."],
         "0x80000001.EBX PkgType, 0x8000001F (SEV/SNP bits, C-bit), 0x80000020, RDT counts"), L)


def gen_genoa():
    sig = 0x00A10F11
    L = amd_common(sig, 192, "AMD EPYC 9654 96-Core Processor", 0x80000028, 0x40000000)
    L.append((5, 0, 0x40, 0x40, 0x3, 0x11))
    ebx = 0xF1BF97A9   # + AVX512F DQ IFMA CD BW VL
    ecx = B(1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 14, 16, 22)   # + LA57 on server
    L.append((7, 0, 1, ebx, ecx, B(4, 28)))           # FSRM, FLUSH_L1D
    L.append((7, 1, B(5), 0, 0, 0))                    # AVX512_BF16 (no AVX_VNNI)
    amd_topo(L, 8, 192)
    L += xsave_leaves(0x2E7, 0x1800, B(0, 1, 2, 3), amd=True)
    amd_rdt(L, zen4=True)
    L.append((0x80000005, 0, 0xFF48FF40, 0xFF48FF40, 0x20080140, 0x20080140))
    L.append((0x80000006, 0, 0x5C002200, 0x6C004200, 0x04006140, 0x0C009140))  # L3 384MB total
    L.append((0x80000007, 0, 0, 0x3B, 0, 0x6799))
    # later Zen4 microcode (7800X3D/7940H/Z1 dumps) enumerates BTC_NO(29) and IBPB_RET(30)
    e8 = 0x791EF257 | B(3, 23)
    L.append((0x80000008, 0, 0x00003934, e8, 0x000080BF, 0x00010007))
    L.append((0x8000000A, 0, 0x1, 0x8000, 0, 0x1EBFBCFF))
    L.append((0x80000019, 0, 0xF048F040, 0xF0400000, 0, 0))
    L.append((0x8000001A, 0, 0x6, 0, 0, 0))
    L.append((0x8000001B, 0, 0xBFF, 0, 0, 0))
    amd_l3_1d(L, (0x01C0003F, 0x7FF), (0x0003C163, 0x03C0003F, 0x7FFF))
    L.append((0x8000001F, 0, 0x0101FD3F, 0x00004173, 0x3EE, 0x1))  # approx
    L.append((0x80000020, 0, 0, 0x1E, 0, 0))
    L.append((0x80000020, 1, 0xB, 0, 0, 0xF))
    L.append((0x80000020, 2, 0xB, 0, 0, 0xF))
    # NO_NEST_BP FS_GS_NS LFENCE_DISPATCH SMM_PG_CFG_LOCK NSCB UAI AUTO_IBRS
    # NO_SMM_CTL FSRS FSRC PREFETCHCTL CPUID_USER_DIS EPSF  (no SBPB/IBPB_BRTYPE: synthesised)
    L.append((0x80000021, 0, 0x00062FCF, 0x0000015C, 0, 0))
    L.append((0x80000022, 0, 0x3, 0x00084106, 0x3, 0))
    L.append((0x80000026, 0, 0x1, 0x2, 0x100, 0))
    L.append((0x80000026, 1, 0x4, 0x10, 0x201, 0))
    L.append((0x80000026, 2, 0x4, 0x10, 0x302, 0))
    L.append((0x80000026, 3, 0x8, 0xC0, 0x403, 0))
    L.append((0x80000026, 4, 0, 0, 0, 0))
    fill_basic(L, 0x10)
    fill_ext(L, 0x80000028)
    emit("amd-zen4-genoa.txt", amd_hdr("AMD EPYC 9654 (Genoa, Zen 4, 96C/192T)", 0x19, 0x11, 1, sig,
         ["  libcpuid tests/amd/zen4 Ryzen 7 7700X dump (same Zen4 core: 7.x, 0xD, 0x80000008/21/22/26);",
          "  archspec-json tests/targets/linux-rocky8.5-zen4 (/proc/cpuinfo of EPYC 9654: pcid x2apic la57 amd_ppin sme sev);",
          "  libcpuid 7800X3D/7940H dumps (newer ucode: BTC_NO, IBPB_RET); QEMU EPYC-Genoa model."],
         "0x80000001.EBX PkgType, 0x80000008.ECX ApicIdSize, 0x8000001F SEV bits, 0x80000020, RDT"), L)


def gen_turin():
    sig = 0x00B00F21
    L = amd_common(sig, 192, "AMD EPYC 9655 96-Core Processor", 0x80000028, 0x40000000)
    L.append((5, 0, 0x40, 0x40, 0x3, 0x21))
    ebx = 0xF1BF97AB   # Zen5 adds TSC_ADJUST
    ecx = B(1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 14, 16, 22, 24, 27, 28)  # + BLD MOVDIRI MOVDIR64B
    L.append((7, 0, 1, ebx, ecx, B(4, 8, 28)))         # FSRM VP2INTERSECT FLUSH_L1D
    L.append((7, 1, B(4, 5), 0, 0, 0))                 # AVX_VNNI AVX512_BF16
    amd_topo(L, 8, 192)
    L += xsave_leaves(0x2E7, 0x1800, B(0, 1, 2, 3), amd=True)
    L.append((0xF, 0, 0, 0xFFF, 0, 0x2))
    L.append((0xF, 1, 0x14, 0x40, 0xFFF, 0x7))
    L.append((0x10, 0, 0, 0x2, 0, 0))
    L.append((0x10, 1, 0xF, 0, 0x4, 0xF))
    L.append((0x80000005, 0, 0xFF60FF40, 0xFF60FF40, 0x300C0140, 0x20080140))
    L.append((0x80000006, 0, 0x40802040, 0x60804040, 0x04008140, 0x0C009140))
    L.append((0x80000007, 0, 0, 0x3B, 0, 0x6799))
    e8 = 0x791EF257 | B(3, 23)     # incl. BTC_NO, IBPB_RET enumerated on Zen5
    L.append((0x80000008, 0, 0x00003934, e8, 0x000080BF, 0x00010007))
    L.append((0x8000000A, 0, 0x1, 0x8000, 0, 0xFEBB9DFF))
    L.append((0x80000019, 0, 0xF060F040, 0x40200000, 0, 0))
    L.append((0x8000001A, 0, 0xA, 0, 0, 0))
    L.append((0x8000001B, 0, 0x00081BFF, 0, 0, 0))
    amd_l3_1d(L, (0x03C0003F, 0x3FF, 0x02C0003F), (0x0003C163, 0x03C0003F, 0x7FFF))
    L.append((0x8000001F, 0, 0x0101FD3F, 0x00004173, 0x3EE, 0x1))  # approx (Genoa-like)
    L.append((0x80000020, 0, 0, 0x7E, 0, 0))
    L.append((0x80000020, 1, 0xC, 0, 0, 0xF))
    L.append((0x80000020, 2, 0xC, 0, 0, 0xF))
    L.append((0x80000020, 3, 0, 0x2, 0x7F, 0))
    L.append((0x80000020, 4, 0, 0, 0, 0))
    L.append((0x80000020, 5, 0x14, 0x1F, 0x1, 0))
    # as Zen4 + bits 12,14-21 + SBPB(27) IBPB_BRTYPE(28) SRSO_US_NO(30); SRSO_NO(29) clear
    L.append((0x80000021, 0, 0x593FFFCF, 0x00080382, 0, 0))
    L.append((0x80000022, 0, 0x7, 0x00084106, 0x3, 0))
    L.append((0x80000026, 0, 0x1, 0x2, 0x100, 0))
    L.append((0x80000026, 1, 0x4, 0x10, 0x201, 0))
    L.append((0x80000026, 2, 0x4, 0x10, 0x302, 0))
    L.append((0x80000026, 3, 0x8, 0xC0, 0x403, 0))
    L.append((0x80000026, 4, 0, 0, 0, 0))
    fill_basic(L, 0x10)
    fill_ext(L, 0x80000028)
    emit("amd-zen5-turin.txt", amd_hdr("AMD EPYC 9655 (Turin, Zen 5, 96C/192T)", 0x1A, 0x02, 1, sig,
         ["  libcpuid tests/amd/zen5 Ryzen 9 9950X dump (same Zen5 core: 7.x, 0xD, 0x80000008/21/22/26);",
          "  QEMU EPYC-Turin model (server set); Linux arch/x86/include/asm/cpufeatures.h (SRSO_USER_KERNEL_NO)."],
         "stepping, 0x80000001.EBX PkgType, 0x80000008.ECX, 0x8000001F, 0x80000020, RDT, SRSO_MSR_FIX(bit31) left clear"), L)


if __name__ == "__main__":
    gen_skx_clx("intel-skylake-sp.txt", False)
    gen_skx_clx("intel-cascade-lake.txt", True)
    gen_icx()
    gen_spr()
    gen_rome()
    gen_milan()
    gen_genoa()
    gen_turin()
