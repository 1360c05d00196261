# syntax: att
# guest: local APIC timer (one-shot, periodic, TSC-deadline) from 64-bit long mode through the x2APIC MSRs
#
# Masks both 8259s and enters long mode (hv64.inc; 0-2 MiB, FEC00000h and FEE00000h identity
# mapped).  Through an IDT (16-byte gates) and the local APIC (apic_pm.inc, apic_routines_lm):
#  * CPUID.1 EDX bit 9 (APIC), ECX bit 21 (x2APIC) and bit 24 (TSC-deadline) set;
#    IA32_APIC_BASE = FEE00900h, and RDMSR 803h raises #GP while in xAPIC mode;
#  * IA32_APIC_BASE |= 400h (EXTD) switches to x2APIC: it reads FEE00D00h, the MMIO page no
#    longer answers (reads all ones), MSR 802h (ID) reads 0 and MSR 803h (version) 00060014h;
#    SVR (MSR 80Fh) = 1FFh;
#  * vector 40h counts LAPIC timer interrupts (EOI: WRMSR 80Bh with 0): one-shot (MSRs 83Eh
#    divide 1, 832h LVT, 838h count 4E20h) exactly 1 with current count (839h) 0 after it;
#    periodic (divide 16, count 100h) 10, then count 0 stops it; TSC-deadline (TSC + 50000) 1,
#    IA32_TSC_DEADLINE 0 after it;
#  * no spurious (FFh) or 8259 vectors.
# Serial output:  apic: version 00060014
#                 one-shot 01 periodic 0A tsc-deadline 01
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"
.include "apic_pm.inc"

main:
    cli
    apic_real lm

.code64
long_entry:                    # data segments 10h, RSP 7C00h (hv64.inc)
    apic_setup lm
    apic_timer_test lm
    apic_common lm

.include "lib64.inc"
.include "hv64.inc"
