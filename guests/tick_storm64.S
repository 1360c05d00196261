# syntax: att
# guest: 100000 local APIC timer interrupts in 64-bit long mode (x2APIC MSRs), counted by the handler
#
# Masks both 8259s, enters long mode (hv64.inc) and sets up the local APIC (apic_pm.inc).
# The LAPIC timer runs periodic with divide 1 and initial count 100h (1.28 us of virtual time)
# on vector 41h while the guest spins with interrupts on; the handler counts, stops the timer
# itself at the 100000th (186A0h) interrupt and sends EOI.  After a further wait the count
# must still be exactly 186A0h, with no spurious or 8259 vectors (storm.inc).  What it
# measures: the cost of delivering an external interrupt.
# Serial output:  storm: lapic timer 000186A0
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"
.include "apic_pm.inc"
.include "storm.inc"

main:
    cli
    apic_real lm

.code64
long_entry:
    apic_setup lm
    storm_ticks lm
    apic_common lm
    storm_common lm

.include "lib64.inc"
.include "hv64.inc"
