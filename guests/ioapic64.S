# syntax: att
# guest: PIT (pin 2, edge) and RTC (pin 8, level) interrupts through the I/O APIC at FEC00000h to the x2APIC, in 64-bit long mode
#
# In real mode: masks both 8259s and starts PIT channel 0 in mode 2 at 1 kHz (lib.inc
# pit0_mode2); then long mode (hv64.inc; 0-2 MiB, FEC00000h and FEE00000h identity mapped), an
# IDT of 16-byte gates, and the local APIC switched to x2APIC mode (apic_pm.inc: IA32_APIC_BASE
# FEE00900h -> FEE00D00h, MSR 803h #GP before, MMIO page silent after, ID 0, version
# 00060014h, SVR 1FFh, EOI through MSR 80Bh, ISR through MSR 812h).  The I/O APIC (version
# 00170011h) is programmed as in ioapic32: entry 2 -> vector 50h edge, entry 8 -> vector 58h
# level, physical APIC 0; the RTC periodic interrupt at 1024 Hz; Remote IRR of entry 8 and the
# ISR bit of 58h set inside the first RTC handler, Remote IRR clear after the EOIs; no 8259 or
# spurious vector.
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
    apic_real lm

.code64
long_entry:                    # data segments 10h, RSP 7C00h (hv64.inc)
    apic_setup lm
    ioapic_test lm
    apic_common lm

.include "lib.inc"
.include "lib64.inc"
.include "hv64.inc"
