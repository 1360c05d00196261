# syntax: att
# guest: PIT (pin 2, edge) and RTC (pin 8, level) interrupts through the I/O APIC at FEC00000h to the xAPIC, in 32-bit protected mode
#
# In real mode: masks both 8259s and starts PIT channel 0 in mode 2 at 1 kHz (lib.inc
# pit0_mode2); then flat 32-bit protected mode (hv32.inc), an IDT of 8-byte gates, the local
# APIC through its MMIO page (apic_pm.inc: IA32_APIC_BASE FEE00900h, x2APIC MSRs #GP, ID 0,
# version 00060014h, SVR 1FFh).  The I/O APIC (version 00170011h): entry 2 -> vector 50h
# edge, entry 8 -> vector 58h level, both fixed to physical APIC 0; the RTC periodic
# interrupt at 1024 Hz.  The RTC handler reads register C, and the first time records entry 8's
# Remote IRR and the LAPIC ISR bit of 58h (both 1 inside the handler); after the EOIs the main
# code sees Remote IRR 0.  The 8259 vectors 08h/70h and the spurious vector never run.
# Serial output:  ioapic: version 00170011
#                 pit 0A rtc 0A legacy 00      (rtc: about 10 at 1024 Hz, at least 5)
#                 rtc handler: remote IRR 1 ISR 1, after EOI remote IRR 0
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"
.include "apic_pm.inc"

main:
    cli
    movw $PIT_COUNT, %ax
    call pit0_mode2            # its edges are lost while entry 2 is still masked
    apic_real pm

.code32
pm_entry:                      # flat data segments, ESP 7C00h (hv32.inc)
    apic_setup pm
    ioapic_test pm
    apic_common pm

.include "lib.inc"
.include "lib32.inc"
.include "hv32.inc"
