# syntax: att
# guest: a page holding translated code is overwritten by one REP MOVSD with new code, then run (real mode)
#
# As a boot loader hands over to the kernel it loaded (ISOLINUX's shuffler copying Linux over
# the memory its own 32-bit code ran from): page 2000h first holds a routine at 2100h
# (mov $1, %ax; ret), which is run, so it is translated; then one REP MOVSD copies a whole new
# page over it, whose entry at 2000h jumps to a routine at 2100h (mov $2, %ax; ret).  A CPU
# snoops every store into code (Intel SDM Vol. 3A 11.6): the call must return 2.  Unicorn
# 2.1.1 checks only the first store of the copy into the page against its translations
# (the TLB entry is "dirty" from then on), so the old block at 2100h, which that store did
# not touch, survived; the first new block of the page finds the page changed
# (hypervisor/xmodify.py).
# Serial output:  smc page copy ok
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"

.set OLD, 0x2000               # the page overwritten
.set NEW, 0x3000               # the new page, built here first

main:
    cli
    movb $0xB8, (OLD+0x100)     # mov $1, %ax ; ret
    movw $1, (OLD+0x101)
    movb $0xC3, (OLD+0x103)
    movw $OLD+0x100, %bx
    call *%bx
    cmpw $1, %ax
    jne bad_first
    xorw %ax, %ax               # the new page: zeros, but for its two pieces of code
    movw $NEW, %di
    movw $0x800, %cx
    cld
    rep stosw
    movb $0xE9, (NEW)           # jmp rel16 to NEW+100h (from NEW+3)
    movw $0xFD, (NEW+1)
    movb $0xB8, (NEW+0x100)     # mov $2, %ax ; ret
    movw $2, (NEW+0x101)
    movb $0xC3, (NEW+0x103)
    movw $NEW, %si
    movw $OLD, %di
    movw $0x400, %cx
    rep movsl
    movw $OLD, %bx
    call *%bx
    cmpw $2, %ax
    jne bad_stale
    movw $ok_msg, %si
    call puts
    call newline
    jmp pass

bad_first:
    movw $bad_first_msg, %si
    jmp fail
bad_stale:
    movw $bad_stale_msg, %si
    jmp fail

.include "lib.inc"

ok_msg:        .asciz "smc page copy ok"
bad_first_msg: .asciz "the routine did not run as first written"
bad_stale_msg: .asciz "the old routine ran after its page was overwritten"
