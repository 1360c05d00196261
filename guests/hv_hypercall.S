# syntax: att
# guest: Hyper-V hypercall page (read/execute overlay) and every decoder status path from 64-bit long mode
#
# In real mode: enables the hypercall page (GUEST_OS_ID first: without it the enable bit stays
# 0) and checks that VMCALL in real mode raises #UD.  Then enters long mode directly (PAE, LME,
# PE+PG), checks the page holds VMCALL (0F 01 C1) RET and that a write leaves it unchanged, runs
# every case of hv_cases.inc through the page with the 64-bit convention (RCX input value,
# RDX/R8 GPAs or fast input, RAX result), checks the GetVpRegisters output, and checks that
# VMCALL at CPL 3 raises #UD.  Output on COM1 (long mode has no BIOS):
# Serial output:  hypercall page ok
#                 25 cases ok
#                 CPL3 #UD ok
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason, with the case number, result and expected value).

.include "boot.inc"
.include "gdt.inc"

.set PML4, 0x1000
.set PDPT, 0x2000
.set PD, 0x3000
.set IDT, 0x4000
.set TSS, 0x5000
.set UD_COUNT, VARS            # dword: #UD taken
.set SAVED_RSP, VARS+8         # qword: ring-0 RSP while the CPL 3 test runs

main:
    cli
    movw $0, (UD_COUNT)
    movw $0, (UD_COUNT+2)
    movw $rm_ud, (6*4)         # real-mode #UD handler in the IVT
    movw $0, (6*4+2)
    # The hypercall MSR before GUEST_OS_ID: the enable bit must stay clear.
    call hv_write_hypercall_msr
    rdmsr
    testb $1, %al
    jnz rm_fail_gating
    call hv_enable_hypercall_page
    rdmsr
    testb $1, %al
    jz rm_fail_enable
    vmcall                     # real mode: #UD, the handler skips it
    cmpw $1, (UD_COUNT)
    jne rm_fail_ud
    # Zero the page tables, IDT and TSS (1000h-5FFFh) and build the identity map.
    xorl %eax, %eax
    movw $0x1000, %di
    movl $0x1400, %ecx
    rep stosl
    movl $PDPT+7, (PML4)
    movl $PD+7, (PDPT)
    movl $0x87, (PD)           # 0-2 MiB, one user-accessible 2 MiB page
    movl $0x6F00, (TSS+4)      # RSP0 for the CPL 3 test
    lgdt gdt_ptr
    movl $PML4, %eax
    jmp hv_enter_long_mode

rm_ud:
    pushw %bp
    movw %sp, %bp
    addw $3, 2(%bp)            # skip the 3-byte VMCALL
    popw %bp
    incw (UD_COUNT)
    iret

rm_fail_gating:
    movw $msg_gating, %si
    call fail
rm_fail_enable:
    movw $msg_enable, %si
    call fail
rm_fail_ud:
    movw $msg_rm_ud, %si
    call fail

gdt_head GDT_CODE64
    .quad 0x00AFFA000000FFFF   # 18h 64-bit ring-3 code
    .quad 0x00CFF2000000FFFF   # 20h ring-3 data
    .quad 0x0000890050000067   # 28h 64-bit TSS at 5000h, limit 67h (low half)
    .quad 0                    #     (high half)
gdt_tail

msg_gating:
    .asciz "HYPERCALL enabled before GUEST_OS_ID"
msg_enable:
    .asciz "HYPERCALL enable bit did not stick"
msg_rm_ud:
    .asciz "VMCALL in real mode did not raise #UD"

.code64
long_entry:                    # data segments 10h, RSP 7C00h (hv64.inc)
    movq $6, %rdi
    movq $ud_handler, %rax
    call set_gate
    lidt idt_ptr64
    movw $0x28, %ax
    ltr %ax
    # The hypercall page: VMCALL; RET, and the guest cannot change it.
    movq $HV_HCPAGE, %rbx
    movl (%rbx), %eax
    cmpl $0xC3C1010F, %eax
    jne fail_page
    movl $0x90909090, (%rbx)
    movl (%rbx), %eax
    cmpl $0xC3C1010F, %eax
    jne fail_page_write
    movq $msg_page_ok, %rsi
    call puts64
    # Inputs at HV_IN: zero 3 pages, then the register-list header and the PostMessage.
    movq $HV_IN, %rdi
    xorl %eax, %eax
    movl $0x600, %ecx
    rep stosq
    movq $HV_IN, %rbx
    movq $-1, %rax
    movq %rax, (%rbx)          # partition SELF
    movl $0xFFFFFFFE, 8(%rbx)  # VP SELF
    movl $0x20010, 0x10(%rbx)  # RIP
    movl $0x90003, 0x14(%rbx)  # VP_INDEX
    movl $0x7777, 0x800(%rbx)  # PostMessage: connection 7777h (none: VMBus has 1-4), type 1
    movl $1, 0x808(%rbx)
    movl $4, 0x80C(%rbx)
    # The cases.
    movq $hv_cases, %r12
    xorl %r13d, %r13d
case_loop:
    movq (%r12), %rcx
    movq 8(%r12), %rdx
    movq 0x10(%r12), %r8
    movq $0x5A5A5A5A, %rax
    movq $HV_HCPAGE, %r11
    call *%r11
    cmpq 0x18(%r12), %rax
    jne fail_case
    incl %r13d
    addq $0x20, %r12
    cmpq $hv_cases_end, %r12
    jb case_loop
    # The last case read RIP (the VMCALL in the hypercall page) and VP_INDEX (0).
    movq $HV_OUT, %rbx
    cmpq $0, 0x10(%rbx)
    jne fail_output
    cmpq $HV_HCPAGE, (%rbx)
    jne fail_output
    movl %r13d, %eax
    call hex8_64
    movq $msg_cases_ok, %rsi
    call puts64
    # CPL 3: VMCALL must raise #UD and not run the hypercall.
    movq $UD_COUNT, %rbx       # (a base register: keystone may make bare addresses
    movl $0, (%rbx)            #  RIP-relative in 64-bit code)
    movq $SAVED_RSP, %rbx
    movq %rsp, (%rbx)
    pushq $0x23
    pushq $0x6000
    pushq $2
    pushq $0x1B
    pushq $user_code
    iretq
user_code:
    movq $0x5555, %rax
    movq $0x10008, %rcx
    vmcall
    ud2                        # only reached if the VMCALL ran: RAX is 0 then
after_user:
    cmpq $0x5555, %rax
    jne fail_cpl3
    movq $msg_cpl3_ok, %rsi
    call puts64
    call pass64

ud_handler:
    pushq %rbx
    movq $UD_COUNT, %rbx
    incl (%rbx)
    popq %rbx
    testb $3, 8(%rsp)          # CS of the interrupted code
    jnz ud_from_user
    addq $3, (%rsp)            # ring 0: skip the VMCALL
    iretq
ud_from_user:
    movq $SAVED_RSP, %rsp      # abandon the ring-3 context
    movq (%rsp), %rsp
    jmp after_user

fail_page:
    movq $msg_bad_page, %rsi
    jmp fail64
fail_page_write:
    movq $msg_page_written, %rsi
    jmp fail64
fail_output:
    movq $msg_bad_output, %rsi
    jmp fail64
fail_cpl3:
    movq $msg_bad_cpl3, %rsi
    jmp fail64
fail_case:
    movq %rax, %rbx
    movq $msg_case, %rsi
    call puts64
    movl %r13d, %eax
    call hex8_64
    movq $msg_got, %rsi
    call puts64
    movq %rbx, %rax
    call hex64_64
    movq $msg_want, %rsi
    call puts64
    movq 0x18(%r12), %rax
    call hex64_64
    movq $msg_nl, %rsi
    jmp fail64

idt_ptr64:
    .word 0xFFF
    .quad IDT

.p2align 3, 0
.include "hv_cases.inc"

.include "lib64.inc"
.include "hv64.inc"
.include "hv.inc"
.include "lib.inc"
