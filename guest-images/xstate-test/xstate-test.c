/*
 * xstate-test: a guest program for pvkvm's extended-state checks (issue 9), built
 * static (gcc -static) and put in a test initramfs by vmm/tests/xstate.rs.
 *
 * (a) YMM: load ymm0-15 with a pattern, yield to a busy child that loads its own pattern
 *     into the same registers, read ours back; the upper 128 bits must survive every
 *     context switch (they do not when the guest kernel saves tasks with FXSAVE while
 *     the CPU runs processes with AVX enabled).
 * (b) PKRU: an unprivileged child writes PKRU = access-disable for key 0 and makes a
 *     system call; the domain must survive, and another process must then read PKRU 0.
 *     Where ring-3 CPUID shows no OSPKE the check of PKRU is skipped (with the reason),
 *     but the attempt is still made and the domain must still survive it.
 *
 * Prints "xstate-test: PASS" at the end, or "xstate-test: FAIL <why>".
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define ROUNDS 400
#define SPIN 200000

static int failures;

#define FAIL(...)                                  \
    do {                                           \
        printf("xstate-test: FAIL " __VA_ARGS__);  \
        printf("\n");                              \
        failures++;                                \
    } while (0)

/* Each line loads/stores one YMM register from/to 32 bytes at offset 32*n. */
#define LD(n) "vmovdqu " #n "*32(%[in]), %%ymm" #n "\n\t"
#define ST(n) "vmovdqu %%ymm" #n ", " #n "*32(%[out])\n\t"
#define ALL(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15)
#define CLOBBER_YMM                                                                       \
    "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",     \
        "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"

/* Loads in[] into ymm0-15, yields (sched_yield) and spins so the timer can preempt,
 * then stores the registers to out[]. No compiler code runs in between. */
static void ymm_round(const uint8_t *in, uint8_t *out, long spin)
{
    long rax, cnt;
    asm volatile(ALL(LD)
                 "mov %[nr], %%eax\n\t"
                 "syscall\n\t"
                 "1: dec %[cnt]\n\t"
                 "jnz 1b\n\t"
                 "mov %[nr], %%eax\n\t"
                 "syscall\n\t"
                 ALL(ST)
                 : "=&a"(rax), [cnt] "=&r"(cnt)
                 : [in] "r"(in), [out] "r"(out), [nr] "i"(SYS_sched_yield), "1"(spin)
                 : "rcx", "r11", "memory", CLOBBER_YMM);
    (void)rax;
}

/* The busy child: its own pattern in every YMM register, yield, forever. */
static void ymm_noise(void)
{
    uint8_t in[16 * 32], out[16 * 32];
    memset(in, 0xee, sizeof(in));
    for (;;)
        ymm_round(in, out, SPIN / 4);
}

static long ctxt_switches(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long total = 0, v;
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "voluntary_ctxt_switches: %ld", &v) == 1 ||
            sscanf(line, "nonvoluntary_ctxt_switches: %ld", &v) == 1)
            total += v;
    }
    fclose(f);
    return total;
}

static void test_ymm(int have_avx)
{
    if (!have_avx) {
        printf("xstate-test: ymm skipped: CPUID.1.ECX.AVX clear at ring 3\n");
        return;
    }
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(0, &one);
    sched_setaffinity(0, sizeof(one), &one);
    pid_t child = fork();
    if (child < 0) {
        FAIL("fork: %m");
        return;
    }
    if (child == 0) {
        sched_setaffinity(0, sizeof(one), &one);
        ymm_noise();
    }
    long before = ctxt_switches();
    uint8_t in[16 * 32], out[16 * 32];
    long bad_upper = 0, bad_lower = 0, first_bad = -1;
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < (int)sizeof(in); i++)
            in[i] = (uint8_t)(r * 7 + i * 13 + 1);
        memset(out, 0, sizeof(out));
        ymm_round(in, out, SPIN);
        for (int reg = 0; reg < 16; reg++) {
            int lo = memcmp(in + reg * 32, out + reg * 32, 16) != 0;
            int hi = memcmp(in + reg * 32 + 16, out + reg * 32 + 16, 16) != 0;
            bad_lower += lo;
            bad_upper += hi;
            if ((lo || hi) && first_bad < 0)
                first_bad = r;
        }
    }
    long after = ctxt_switches();
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    printf("xstate-test: ymm: %d rounds, %ld context switches, %ld upper halves lost, "
           "%ld lower halves lost\n",
           ROUNDS, after - before, bad_upper, bad_lower);
    /* Each round yields to the spinning child, but how many of those yields switch
     * depends on the host's load (387 of 400 were seen on a busy host): the check needs
     * enough switches to mean something, not one per round. */
    if (after - before < ROUNDS / 4)
        FAIL("ymm: only %ld context switches", after - before);
    if (bad_upper || bad_lower)
        FAIL("ymm: registers changed across context switches (first in round %ld)", first_bad);
}

static unsigned rdpkru(void)
{
    unsigned eax, edx;
    asm volatile(".byte 0x0f, 0x01, 0xee" : "=a"(eax), "=d"(edx) : "c"(0));
    return eax;
}

/* Child: as nobody, PKRU = access-disable key 0, then a system call, then report what
 * PKRU is on return (exit status: 0 it was reset, 1 it kept the value). */
static void pkru_child(void)
{
    if (setgid(65534) || setuid(65534))
        _exit(3);
    long ret;
    unsigned after;
    asm volatile("xor %%ecx, %%ecx\n\t"
                 "xor %%edx, %%edx\n\t"
                 "mov $1, %%eax\n\t"
                 ".byte 0x0f, 0x01, 0xef\n\t" /* wrpkru: AD for key 0 */
                 "mov %[nr], %%eax\n\t"
                 "syscall\n\t"                /* getpid, with every page unreadable */
                 "mov %%rax, %[ret]\n\t"
                 "xor %%ecx, %%ecx\n\t"
                 ".byte 0x0f, 0x01, 0xee\n\t" /* rdpkru */
                 "mov %%eax, %[after]\n\t"
                 "xor %%ecx, %%ecx\n\t"
                 "xor %%edx, %%edx\n\t"
                 "xor %%eax, %%eax\n\t"
                 ".byte 0x0f, 0x01, 0xef\n\t" /* wrpkru 0: our own pages again */
                 : [ret] "=&r"(ret), [after] "=&r"(after)
                 : [nr] "i"(SYS_getpid)
                 : "rax", "rcx", "rdx", "r11", "memory");
    _exit(after == 0 ? 0 : 1);
}

static void test_pkru(int ospke)
{
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) {
        FAIL("fork: %m");
        return;
    }
    if (child == 0)
        pkru_child();
    int status = 0;
    waitpid(child, &status, 0);
    if (WIFSIGNALED(status))
        printf("xstate-test: pkru: unprivileged wrpkru ended by signal %d (%s)\n",
               WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
        printf("xstate-test: pkru: unprivileged wrpkru + syscall: exit %d (%s)\n",
               WEXITSTATUS(status),
               WEXITSTATUS(status) == 0 ? "PKRU 0 after the syscall" : "PKRU kept");
    if (!ospke) {
        printf("xstate-test: pkru skipped: CPUID.7.ECX.OSPKE clear at ring 3 (the domain "
               "survived the attempt)\n");
        return;
    }
    unsigned now = rdpkru();
    printf("xstate-test: pkru: another process reads PKRU %#x\n", now);
    if (now != 0)
        FAIL("pkru: PKRU %#x leaked into another process", now);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    unsigned a, b, c, d;
    __cpuid(1, a, b, c, d);
    int avx = (c >> 28) & 1, osxsave = (c >> 27) & 1;
    __cpuid_count(7, 0, a, b, c, d);
    int ospke = (c >> 4) & 1, pku = (c >> 3) & 1;
    printf("xstate-test: ring-3 CPUID: avx %d osxsave %d pku %d ospke %d\n", avx, osxsave,
           pku, ospke);
    test_ymm(avx);
    test_pkru(ospke);
    if (failures)
        printf("xstate-test: FAIL (%d)\n", failures);
    else
        printf("xstate-test: PASS\n");
    return failures != 0;
}
