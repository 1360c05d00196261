# syntax: att
# guest: CPU exceptions through the IVT, a 32-bit IDT and a 64-bit IDT (with an IST stack)
#
# Each check arms a handler that records the vector, error code, saved IP and CR2, and resumes
# at a chosen label; the check compares them with the expected values (faults save the faulting
# instruction's address, traps the next one) and prints one line.
#   real mode (IVT): #DE (DIV by 0), #BP (INT3), #OF (INTO with OF=1), #BR (BOUND out of
#     range), #UD (UD2);
#   32-bit protected mode (IDT of interrupt gates): #DE, #UD, #GP(50h) from loading a selector
#     beyond the GDT limit into DS, #PF(2) with CR2 from a write to a not-present page (non-PAE
#     paging, the 4 KiB page at 3FF000h left out);
#   64-bit long mode (16-byte gates): #DE, #UD delivered on IST1 (the handler's RSP must be in
#     the IST stack), #GP(50h) from the bad selector, #GP(0) from a non-canonical address,
#     #PF(0) with CR2 from a read above the 4 MiB that are mapped.
# Serial output (one line per check, then PASS):
#   real #DE ok / real #BP ok / real #OF ok / real #BR ok / real #UD ok
#   pm32 #DE vector 00 error 00000000 ok
#   pm32 #UD vector 06 error 00000000 ok
#   pm32 #GP selector vector 0D error 00000050 ok
#   pm32 #PF cr2=003FF010 vector 0E error 00000002 ok
#   lm64 #DE vector 00 error 0000000000000000 ok
#   lm64 #UD on IST1 vector 06 error 0000000000000000 ok
#   lm64 #GP selector vector 0D error 0000000000000050 ok
#   lm64 #GP non-canonical vector 0D error 0000000000000000 ok
#   lm64 #PF cr2=0000000000400008 vector 0E error 0000000000000000 ok
#   PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"

.set V_VEC, VARS               # the handlers' record (qwords, so every mode can use them)
.set V_ERR, VARS+0x08
.set V_IP, VARS+0x10
.set V_CR2, VARS+0x18
.set V_SP, VARS+0x20
.set V_RESUME, VARS+0x28       # where the handler resumes
.set BOUNDS, VARS+0x40         # BOUND's lower/upper word pair
.set IDT, 0x6000               # 32 gates (8 bytes in protected mode, 16 in long mode)
.set PD32, 0x1000              # non-PAE page directory and its one page table
.set PT32, 0x2000
.set PF32_ADDR, 0x3FF010
.set PF64_ADDR, 0x400008
.set IST1_TOP, 0x21000

main:
    cli
    movw $0xFFFF, (V_VEC)      # "no exception yet"
    movw $rm_de, (0x00*4)
    movw $0, (0x00*4+2)
    movw $rm_bp, (0x03*4)
    movw $0, (0x03*4+2)
    movw $rm_of, (0x04*4)
    movw $0, (0x04*4+2)
    movw $rm_br, (0x05*4)
    movw $0, (0x05*4+2)
    movw $rm_ud, (0x06*4)
    movw $0, (0x06*4+2)
    sti

    # #DE: DIV by zero is a fault: the saved IP is the DIV.
    movw $rm_de_resume, (V_RESUME)
    xorw %dx, %dx
    movw $1, %ax
    xorw %bx, %bx
rm_de_insn:
    divw %bx
rm_de_resume:
    movw $0x00, %ax
    movw $rm_de_insn, %bx
    movw $rm_de_msg, %si
    call rm_check

    # #BP: INT3 is a trap: the saved IP follows it.
    movw $rm_bp_resume, (V_RESUME)
    int3
rm_bp_resume:
    movw $0x03, %ax
    movw $rm_bp_resume, %bx
    movw $rm_bp_msg, %si
    call rm_check

    # #OF: INTO traps when OF=1 (7Fh + 1 overflows a signed byte).
    movw $rm_of_resume, (V_RESUME)
    movb $0x7F, %al
    addb $1, %al
    into
rm_of_resume:
    movw $0x04, %ax
    movw $rm_of_resume, %bx
    movw $rm_of_msg, %si
    call rm_check

    # #BR: BOUND AX, [BX] with AX above the upper bound is a fault.
    movw $rm_br_resume, (V_RESUME)
    movw $0, (BOUNDS)
    movw $0x10, (BOUNDS+2)
    movw $BOUNDS, %bx
    movw $0x20, %ax
rm_br_insn:
    .byte 0x62, 0x07           # bound %ax, (%bx) (keystone rejects the mnemonic)
rm_br_resume:
    movw $0x05, %ax
    movw $rm_br_insn, %bx
    movw $rm_br_msg, %si
    call rm_check

    # #UD: UD2 is a fault.
    movw $rm_ud_resume, (V_RESUME)
rm_ud_insn:
    ud2
rm_ud_resume:
    movw $0x06, %ax
    movw $rm_ud_insn, %bx
    movw $rm_ud_msg, %si
    call rm_check

    # ---- to 32-bit protected mode
    cli
    jmp enter_pm32

# rm_check: the last exception must be vector AX saved at IP BX; prints "<SI> ok".
rm_check:
    cmpw %ax, (V_VEC)
    jne rm_check_fail
    cmpw %bx, (V_IP)
    jne rm_check_fail
    call puts
    pushw %si
    movw $ok_msg, %si
    call puts
    popw %si
    movw $0xFFFF, (V_VEC)
    ret
rm_check_fail:
    call fail

# Real-mode handlers: record the vector and the saved IP, resume at V_RESUME.
rm_de:
    movw $0x00, %cs:(V_VEC)
    jmp rm_common
rm_bp:
    movw $0x03, %cs:(V_VEC)
    jmp rm_common
rm_of:
    movw $0x04, %cs:(V_VEC)
    jmp rm_common
rm_br:
    movw $0x05, %cs:(V_VEC)
    jmp rm_common
rm_ud:
    movw $0x06, %cs:(V_VEC)
rm_common:
    pushw %bp
    movw %sp, %bp
    pushw %ax
    movw 2(%bp), %ax           # [BP+2] IP, [BP+4] CS, [BP+6] FLAGS
    movw %ax, %cs:(V_IP)
    movw %cs:(V_RESUME), %ax
    movw %ax, 2(%bp)
    popw %ax
    popw %bp
    iret

.code32
pm32:                          # flat segments, ESP = STACK_TOP (modes.inc)
    xorl %ecx, %ecx            # every gate to pm_unexpected first
pm_idt_loop:
    movl $pm_unexpected, %eax
    call set_gate32
    incl %ecx
    cmpl $0x20, %ecx
    jb pm_idt_loop
    movl $pm_de, %eax
    movl $0x00, %ecx
    call set_gate32
    movl $pm_ud, %eax
    movl $0x06, %ecx
    call set_gate32
    movl $pm_gp, %eax
    movl $0x0D, %ecx
    call set_gate32
    movl $pm_pf, %eax
    movl $0x0E, %ecx
    call set_gate32
    lidt idtr32

    movl $pm_de_resume, (V_RESUME)
    xorl %edx, %edx
    movl $1, %eax
    xorl %ecx, %ecx
pm_de_insn:
    divl %ecx
pm_de_resume:
    movl $0x00, %eax
    movl $pm_de_insn, %ebx
    xorl %edx, %edx
    movl $pm_de_msg, %esi
    call pm_check

    movl $pm_ud_resume, (V_RESUME)
pm_ud_insn:
    ud2
pm_ud_resume:
    movl $0x06, %eax
    movl $pm_ud_insn, %ebx
    xorl %edx, %edx
    movl $pm_ud_msg, %esi
    call pm_check

    # #GP: selector 50h is beyond the GDT limit; the error code is the selector (SDM 6.13).
    movl $pm_gp_resume, (V_RESUME)
    movl $0x50, %eax
pm_gp_insn:
    movl %eax, %ds
pm_gp_resume:
    movl $0x0D, %eax
    movl $pm_gp_insn, %ebx
    movl $0x50, %edx
    movl $pm_gp_msg, %esi
    call pm_check

    # #PF: non-PAE paging, 0-4 MiB identity mapped except the page at 3FF000h.
    movl $PD32, %edi
    movl $0x800, %ecx          # PD and PT: 2 pages of dwords
    xorl %eax, %eax
    rep stosl
    movl $PT32+3, (PD32)
    movl $PT32, %edi
    movl $3, %eax
    movl $0x3FF, %ecx          # entries 0-3FEh present, 3FFh not
pm_pt_loop:
    stosl
    addl $0x1000, %eax
    loop pm_pt_loop
    movl $PD32, %eax
    movl %eax, %cr3
    movl %cr0, %eax
    orl $0x80000000, %eax
    movl %eax, %cr0
    movl $pm_pf_resume, (V_RESUME)
    movl $PF32_ADDR, %ebx
pm_pf_insn:
    movl %eax, (%ebx)          # supervisor write to a not-present page: error code 2
pm_pf_resume:
    movl %cr0, %eax
    andl $0x7FFFFFFF, %eax
    movl %eax, %cr0
    cmpl $PF32_ADDR, (V_CR2)
    jne pm_bad_cr2
    movl $0x0E, %eax
    movl $pm_pf_insn, %ebx
    movl $2, %edx
    movl $pm_pf_msg, %esi
    call pm_check

    # ---- to long mode
    jmp enter_lm64

pm_bad_cr2:
    movl $pm_bad_cr2_msg, %esi
    call fail32

# set_gate32: IDT entry ECX = 32-bit interrupt gate to EAX in SEL_CODE32 (SDM Vol. 3A 6.11).
set_gate32:
    pushl %eax
    pushl %edx
    movl %eax, %edx
    andl $0xFFFF, %eax
    orl $SEL_CODE32 << 0x10, %eax
    movl %eax, IDT(,%ecx,8)
    andl $0xFFFF0000, %edx
    orl $0x8E00, %edx          # present, DPL 0, 32-bit interrupt gate
    movl %edx, IDT+4(,%ecx,8)
    popl %edx
    popl %eax
    ret

# pm_check: expect vector EAX, saved EIP EBX, error code EDX; prints
# "<ESI> vector VV error EEEEEEEE ok".
pm_check:
    cmpl %eax, (V_VEC)
    jne pm_check_fail
    cmpl %ebx, (V_IP)
    jne pm_check_fail
    cmpl %edx, (V_ERR)
    jne pm_check_fail
    call puts32
    pushl %esi
    movl $vector_msg, %esi
    call puts32
    call hex8_32
    movl $error_msg, %esi
    call puts32
    movl %edx, %eax
    call hex32_32
    movl $ok_msg, %esi
    call puts32
    popl %esi
    movl $0xFF, (V_VEC)
    ret
pm_check_fail:
    call fail32

# 32-bit handlers: [ESP] vector, [ESP+4] error code (0 pushed for vectors without one),
# [ESP+8] EIP, CS, EFLAGS.
pm_de:
    pushl $0
    pushl $0x00
    jmp pm_common
pm_ud:
    pushl $0
    pushl $0x06
    jmp pm_common
pm_gp:
    pushl $0x0D
    jmp pm_common
pm_pf:
    pushl $0x0E
    jmp pm_common
pm_unexpected:
    pushl $0
    pushl $0xFE
pm_common:
    pushl %eax
    movl 4(%esp), %eax
    movl %eax, (V_VEC)
    movl 8(%esp), %eax
    movl %eax, (V_ERR)
    movl 0xC(%esp), %eax
    movl %eax, (V_IP)
    movl %cr2, %eax
    movl %eax, (V_CR2)
    movl (V_RESUME), %eax
    movl %eax, 0xC(%esp)
    popl %eax
    addl $8, %esp
    iret

.code64
lm64:
    xorl %r15d, %r15d          # base register for the fixed variables (see lib.inc's notes)
    movl $IDT, %edi            # every gate to lm_unexpected first
    movl $0x80, %ecx
    xorl %eax, %eax
    rep stosl
    xorl %ecx, %ecx
    xorl %edx, %edx
lm_idt_loop:
    movabsq $lm_unexpected, %rax
    call set_gate64
    incl %ecx
    cmpl $0x20, %ecx
    jb lm_idt_loop
    movabsq $lm_de, %rax
    movl $0x00, %ecx
    call set_gate64
    movabsq $lm_ud, %rax
    movl $0x06, %ecx
    movl $1, %edx              # IST1
    call set_gate64
    xorl %edx, %edx
    movabsq $lm_gp, %rax
    movl $0x0D, %ecx
    call set_gate64
    movabsq $lm_pf, %rax
    movl $0x0E, %ecx
    call set_gate64
    lidt idtr64
    movl $TSS64, %edi          # 64-bit TSS: IST1 at offset 24h (SDM Vol. 3A 8.7)
    movl $0x1A, %ecx
    xorl %eax, %eax
    rep stosl
    movl $TSS64+0x24, %edi
    movl $IST1_TOP, (%rdi)
    movw $SEL_TSS64, %ax
    ltr %ax

    movq $lm_de_resume, V_RESUME(%r15)
    xorl %edx, %edx
    movl $1, %eax
    xorl %ecx, %ecx
lm_de_insn:
    divq %rcx
lm_de_resume:
    movl $0x00, %eax
    movq $lm_de_insn, %rbx
    xorl %edx, %edx
    movabsq $lm_de_msg, %rsi
    call lm_check
    call lm_check_normal_stack

    movq $lm_ud_resume, V_RESUME(%r15)
lm_ud_insn:
    ud2
lm_ud_resume:
    movq V_SP(%r15), %rax      # the handler ran on the IST1 stack
    andq $-0x1000, %rax
    cmpq $IST1_TOP-0x1000, %rax
    jne lm_bad_ist
    movl $0x06, %eax
    movq $lm_ud_insn, %rbx
    xorl %edx, %edx
    movabsq $lm_ud_msg, %rsi
    call lm_check

    movq $lm_gp_resume, V_RESUME(%r15)
    movl $0x50, %eax
lm_gp_insn:
    movl %eax, %ds
lm_gp_resume:
    movl $0x0D, %eax
    movq $lm_gp_insn, %rbx
    movl $0x50, %edx
    movabsq $lm_gp_msg, %rsi
    call lm_check
    call lm_check_normal_stack

    movq $lm_nc_resume, V_RESUME(%r15)
    movabsq $0x8000000000000000, %rax
lm_nc_insn:
    movq (%rax), %rbx          # non-canonical: #GP(0), not #PF (SDM Vol. 3A 3.3.7.1)
lm_nc_resume:
    movl $0x0D, %eax
    movq $lm_nc_insn, %rbx
    xorl %edx, %edx
    movabsq $lm_nc_msg, %rsi
    call lm_check

    movq $lm_pf_resume, V_RESUME(%r15)
    movl $PF64_ADDR, %ebx
lm_pf_insn:
    movq (%rbx), %rax          # supervisor read of a not-present page: error code 0
lm_pf_resume:
    movq V_CR2(%r15), %rax
    cmpq $PF64_ADDR, %rax
    jne lm_bad_cr2
    movl $0x0E, %eax
    movq $lm_pf_insn, %rbx
    xorl %edx, %edx
    movabsq $lm_pf_msg, %rsi
    call lm_check
    call pass64

lm_bad_ist:
    movabsq $lm_bad_ist_msg, %rsi
    call fail64
lm_bad_cr2:
    movabsq $lm_bad_cr2_msg, %rsi
    call fail64

# lm_check_normal_stack: the last handler ran on the interrupted code's stack, not IST1.
lm_check_normal_stack:
    pushq %rax
    movq V_SP(%r15), %rax
    cmpq $STACK_TOP, %rax
    ja lm_normal_bad
    cmpq $STACK_TOP-0x400, %rax
    jb lm_normal_bad
    popq %rax
    ret
lm_normal_bad:
    movabsq $lm_bad_stack_msg, %rsi
    call fail64

# set_gate64: IDT entry ECX = 64-bit interrupt gate to RAX in SEL_CODE64 with IST EDX
# (SDM Vol. 3A 6.14.1).
set_gate64:
    pushq %rax
    pushq %rdi
    pushq %rbx
    movl %ecx, %edi
    shll $4, %edi
    addl $IDT, %edi
    movq %rax, %rbx
    andl $0xFFFF, %eax
    orl $SEL_CODE64 << 0x10, %eax
    movl %eax, (%rdi)
    movl %ebx, %eax
    andl $0xFFFF0000, %eax
    orl $0x8E00, %eax          # present, DPL 0, 64-bit interrupt gate
    orl %edx, %eax             # IST index in bits 2:0
    movl %eax, 4(%rdi)
    shrq $0x20, %rbx
    movl %ebx, 8(%rdi)
    movl $0, 0xC(%rdi)
    popq %rbx
    popq %rdi
    popq %rax
    ret

# lm_check: expect vector RAX, saved RIP RBX, error code RDX; prints
# "<RSI> vector VV error EEEEEEEEEEEEEEEE ok".
lm_check:
    cmpq %rax, V_VEC(%r15)
    jne lm_check_fail
    cmpq %rbx, V_IP(%r15)
    jne lm_check_fail
    cmpq %rdx, V_ERR(%r15)
    jne lm_check_fail
    call puts64
    pushq %rsi
    movabsq $vector_msg, %rsi
    call puts64
    call hex8_64
    movabsq $error_msg, %rsi
    call puts64
    movq %rdx, %rax
    call hex64_64
    movabsq $ok_msg, %rsi
    call puts64
    popq %rsi
    movq $0xFF, V_VEC(%r15)
    ret
lm_check_fail:
    call fail64

# 64-bit handlers: [RSP] vector, [RSP+8] error code, [RSP+10h] RIP, CS, RFLAGS, RSP, SS.
lm_de:
    pushq $0
    pushq $0x00
    jmp lm_common
lm_ud:
    pushq $0
    pushq $0x06
    jmp lm_common
lm_gp:
    pushq $0x0D
    jmp lm_common
lm_pf:
    pushq $0x0E
    jmp lm_common
lm_unexpected:
    pushq $0
    pushq $0xFE
lm_common:
    pushq %rax
    movq 8(%rsp), %rax
    movq %rax, V_VEC(%r15)
    movq 0x10(%rsp), %rax
    movq %rax, V_ERR(%r15)
    movq 0x18(%rsp), %rax
    movq %rax, V_IP(%r15)
    movq %cr2, %rax
    movq %rax, V_CR2(%r15)
    movq %rsp, V_SP(%r15)
    movq V_RESUME(%r15), %rax
    movq %rax, 0x18(%rsp)
    popq %rax
    addq $0x10, %rsp
    iretq

    .p2align 3, 0
idtr32:
    .word 0xFF                 # 32 gates x 8 bytes - 1
    .long IDT
    .p2align 3, 0
idtr64:
    .word 0x1FF                # 32 gates x 16 bytes - 1
    .long IDT, 0

rm_de_msg:
    .asciz "real #DE"
rm_bp_msg:
    .asciz "real #BP"
rm_of_msg:
    .asciz "real #OF"
rm_br_msg:
    .asciz "real #BR"
rm_ud_msg:
    .asciz "real #UD"
pm_de_msg:
    .asciz "pm32 #DE"
pm_ud_msg:
    .asciz "pm32 #UD"
pm_gp_msg:
    .asciz "pm32 #GP selector"
pm_pf_msg:
    .asciz "pm32 #PF cr2=003FF010"
pm_bad_cr2_msg:
    .asciz "pm32 #PF: CR2 is not the faulting address"
lm_de_msg:
    .asciz "lm64 #DE"
lm_ud_msg:
    .asciz "lm64 #UD on IST1"
lm_gp_msg:
    .asciz "lm64 #GP selector"
lm_nc_msg:
    .asciz "lm64 #GP non-canonical"
lm_pf_msg:
    .asciz "lm64 #PF cr2=0000000000400008"
lm_bad_ist_msg:
    .asciz "lm64 #UD: handler not on the IST1 stack"
lm_bad_cr2_msg:
    .asciz "lm64 #PF: CR2 is not the faulting address"
lm_bad_stack_msg:
    .asciz "lm64: a non-IST handler did not run on the current stack"
vector_msg:
    .asciz " vector "
error_msg:
    .asciz " error "
ok_msg:
    .asciz " ok\r\n"

.include "lib.inc"
.include "lib32.inc"
.include "lib64.inc"
.include "modes.inc"
