# syntax: att
# guest: local APIC timer (one-shot, periodic, TSC-deadline) from 32-bit protected mode through the xAPIC page at FEE00000h
#
# Masks both 8259s and enters flat 32-bit protected mode (no paging; hv32.inc).  Through an IDT
# (8-byte gates) and the xAPIC MMIO page (apic_pm.inc, apic_routines_pm):
#  * CPUID.1 EDX bit 9 (APIC) and ECX bit 24 (TSC-deadline) set; IA32_APIC_BASE = FEE00900h;
#    RDMSR of x2APIC MSR 803h raises #GP in xAPIC mode; ID 0, version 00060014h; SVR = 1FFh;
#  * vector 40h counts LAPIC timer interrupts (EOI at FEE000B0h): one-shot (divide 1, count
#    4E20h) exactly 1 with current count 0 after it; periodic (divide 16, count 100h) 10, then
#    initial count 0 stops it; TSC-deadline (TSC + 50000) 1, IA32_TSC_DEADLINE 0 after it;
#  * no spurious (FFh) or 8259 vectors.
# Serial output:  apic: version 00060014
#                 one-shot 01 periodic 0A tsc-deadline 01
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"
.include "apic_pm.inc"

main:
    cli
    apic_real pm

.code32
pm_entry:                      # flat data segments, ESP 7C00h (hv32.inc)
    apic_setup pm
    apic_timer_test pm
    apic_common pm

.include "lib32.inc"
.include "hv32.inc"
