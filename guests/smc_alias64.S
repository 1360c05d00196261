# syntax: att
# guest: code patched through a second virtual mapping of its page, then run (long mode)
#
# Long mode with 2 MiB pages (modes.inc) plus an alias: virtual 4-6 MiB maps physical 0-2 MiB
# again, so the routine at 9000h can also be written at 409000h.  As Linux patches its text
# (alternatives, text_poke) through its direct map or a temporary mapping: a store through
# the alias first (the alias's TLB entry is now "dirty" in Unicorn 2.1.1), then the routine
# is run at 9000h (translated), then its immediate is rewritten through the alias and the
# routine run again.  It must return the new value: a CPU snoops stores into code whatever
# linear address they use (Intel SDM Vol. 3A 11.6, "Self-Modifying Code").  Done twice
# (a byte store, then a REP MOVSB replacing a 5-byte CALL by a MOV, as alternatives do).
# Serial output:  smc alias: byte store ok
#                 smc alias: call replaced ok
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"

.set CODE_PAGE, 0x9000         # the patched routine (physical = linear)
.set ALIAS, 0x400000           # linear alias of physical 0-2 MiB

main:
    cli
    jmp enter_pm32

.code32
pm32:
    jmp enter_lm64

.code64
lm64:
    movl $0x83, (PD64+0x10)    # PD entry 2: linear 4-6 MiB -> physical 0-2 MiB (PS)
    movq %cr3, %rax
    movq %rax, %cr3
    movq $STACK_TOP, %rsp

    # 1. A first store through the alias page, before the routine is translated.
    movabsq $ALIAS+CODE_PAGE, %rdi
    movb $0xC3, 0x800(%rdi)
    movl $0x000001B8, (%rdi)   # mov eax, 1 ; ret
    movw $0xC300, 4(%rdi)
    movl $CODE_PAGE, %ebx
    call *%rbx
    cmpl $1, %eax
    jne bad_first
    movb $2, 1(%rdi)           # the immediate, through the alias: mov eax, 2
    call *%rbx
    cmpl $2, %eax
    jne bad_byte
    movabsq $byte_ok_msg, %rsi
    call puts64

    # 2. A CALL replaced by a MOV of the same length (REP MOVSB through the alias).
    movl $CODE_PAGE+0x100, %ebx
    leaq 0x100(%rdi), %rdi
    movabsq $with_call, %rsi
    movl $with_call_end-with_call, %ecx
    pushq %rdi
    rep movsb
    popq %rdi
    call *%rbx
    cmpl $5, %eax
    jne bad_first
    movabsq $with_mov, %rsi
    movl $with_mov_end-with_mov, %ecx
    rep movsb
    call *%rbx
    cmpl $7, %eax
    jne bad_call
    movabsq $call_ok_msg, %rsi
    call puts64
    jmp pass64

bad_first:
    movabsq $bad_first_msg, %rsi
    call fail64
bad_byte:
    movabsq $bad_byte_msg, %rsi
    call fail64
bad_call:
    movabsq $bad_call_msg, %rsi
    call fail64

# Copied to CODE_PAGE+100h: "call +5 (to a mov eax, 5; ret)", then "mov eax, 7" in its place.
with_call:
    .byte 0xE8, 0x01, 0, 0, 0  # call the mov below
    ret
    movl $5, %eax
    ret
with_call_end:
with_mov:
    .byte 0xB8, 7, 0, 0, 0     # mov eax, 7
    ret
with_mov_end:

byte_ok_msg: .asciz "smc alias: byte store ok\r\n"
call_ok_msg: .asciz "smc alias: call replaced ok\r\n"
bad_first_msg: .asciz "routine did not run as first written\r\n"
bad_byte_msg: .asciz "stale code after a byte store through the alias\r\n"
bad_call_msg: .asciz "stale CALL after REP MOVSB through the alias\r\n"

.include "modes.inc"
.include "lib64.inc"
