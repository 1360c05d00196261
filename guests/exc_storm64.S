# syntax: att
# guest: exception storm in 64-bit long mode: 50000 INT3 (#BP) and 50000 UD2 (#UD) through the IDT
#
# Masks both 8259s and enters long mode (hv64.inc, 16-byte gates).  A loop runs INT3
# and UD2 50000 (C350h) times each; the #BP handler counts and returns (INT3 is a trap), the
# #UD handler counts and steps its return address over the 2-byte UD2 (a fault).  Checks both
# counts exactly (storm.inc).  What it measures: the cost of delivering an exception.
# Serial output:  storm: int3 0000C350
#                 storm: ud2 0000C350
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
    storm_exceptions lm
    apic_common lm
    storm_common lm

.include "lib64.inc"
.include "hv64.inc"
