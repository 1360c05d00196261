# syntax: att
# guest: exception storm in 32-bit protected mode: 50000 INT3 (#BP) and 50000 UD2 (#UD) through the IDT
#
# Masks both 8259s and enters flat 32-bit protected mode (hv32.inc, 8-byte gates).  A loop runs INT3
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
    apic_real pm

.code32
pm_entry:
    storm_exceptions pm
    apic_common pm
    storm_common pm

.include "lib32.inc"
.include "hv32.inc"
