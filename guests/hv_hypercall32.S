# syntax: att
# guest: Hyper-V hypercall page and every decoder status path from 32-bit protected mode (EDX:EAX convention)
#
# The same checks as hv_hypercall.S with the 32-bit register convention (TLFS): EDX:EAX input
# value, EBX:ECX input GPA, EDI:ESI output GPA, EDX:EAX result.  Enables the hypercall page in
# real mode, enters flat 32-bit protected mode (no paging), checks the page's bytes and that a
# write leaves them, runs every case of hv_cases.inc, and checks that VMCALL at CPL 3 raises #UD.
# Serial output:  hypercall page ok
#                 19 cases ok        (25 cases, printed in hex)
#                 CPL3 #UD ok
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason, with the case number, result and expected value).

.include "boot.inc"
.include "gdt.inc"

.set IDT, 0x4000
.set TSS, 0x5000
.set UD_COUNT, VARS            # dword: #UD taken
.set SAVED_ESP, VARS+8         # dword: ring-0 ESP while the CPL 3 test runs
.set CASE, VARS+0x10           # dword: pointer to the current case

main:
    cli
    call hv_enable_hypercall_page
    xorl %eax, %eax            # zero the IDT and TSS (4000h-5FFFh)
    movw $IDT, %di
    movl $0x800, %ecx
    rep stosl
    movl $0x6F00, (TSS+4)      # ESP0
    movl $0x10, (TSS+8)        # SS0
    lgdt gdt_ptr
    jmp hv_enter_protected_mode

gdt_head GDT_CODE32
    .quad 0x00CFFA000000FFFF   # 18h 32-bit ring-3 code
    .quad 0x00CFF2000000FFFF   # 20h ring-3 data
    .quad 0x0000890050000067   # 28h 32-bit TSS at 5000h, limit 67h
gdt_tail

.code32
pm_entry:                      # data segments 10h, ESP 7C00h (hv32.inc)
    movl $6, %edi              # #UD
    movl $ud_handler32, %eax
    call set_gate
    lidt idt_ptr32
    movw $0x28, %ax
    ltr %ax
    movl $HV_HCPAGE, %ebx
    cmpl $0xC3C1010F, (%ebx)
    jne fail_page
    movl $0x90909090, (%ebx)
    cmpl $0xC3C1010F, (%ebx)
    jne fail_page_write
    movl $msg_page_ok, %esi
    call puts32
    movl $HV_IN, %edi          # inputs as in hv_hypercall.S
    xorl %eax, %eax
    movl $0xC00, %ecx
    rep stosl
    movl $HV_IN, %ebx
    movl $0xFFFFFFFF, (%ebx)
    movl $0xFFFFFFFF, 4(%ebx)
    movl $0xFFFFFFFE, 8(%ebx)
    movl $0x20010, 0x10(%ebx)
    movl $0x90003, 0x14(%ebx)
    movl $0x7777, 0x800(%ebx)  # connection 7777h: not connected (VMBus has 1-4)
    movl $1, 0x808(%ebx)
    movl $4, 0x80C(%ebx)
    movl $hv_cases, %ebp
case_loop:
    movl %ebp, (CASE)
    movl (%ebp), %eax
    movl 4(%ebp), %edx
    movl 8(%ebp), %ecx
    movl 0xC(%ebp), %ebx
    movl 0x10(%ebp), %esi
    movl 0x14(%ebp), %edi
    movl $HV_HCPAGE, %ebp
    call *%ebp
    movl (CASE), %ebp
    cmpl 0x18(%ebp), %eax
    jne fail_case
    cmpl 0x1C(%ebp), %edx
    jne fail_case
    addl $0x20, %ebp
    cmpl $hv_cases_end, %ebp
    jb case_loop
    movl $HV_OUT, %ebx         # RIP of the VMCALL and VP_INDEX 0
    cmpl $0, 0x10(%ebx)
    jne fail_output
    cmpl $HV_HCPAGE, (%ebx)
    jne fail_output
    movl $hv_cases_end-hv_cases, %eax
    shrl $5, %eax
    call hex8_32
    movl $msg_cases_ok, %esi
    call puts32
    movl %esp, (SAVED_ESP)     # CPL 3: VMCALL must raise #UD
    pushl $0x23
    pushl $0x6000
    pushl $2
    pushl $0x1B
    pushl $user_code32
    iret
user_code32:
    movl $0x10008, %eax
    xorl %edx, %edx
    movl $0x5555, %ebx
    vmcall
    movl %eax, %ebx            # only reached if the VMCALL ran
    ud2
after_user32:
    cmpl $0x5555, %ebx
    jne fail_cpl3
    movl $msg_cpl3_ok, %esi
    call puts32
    call pass32

ud_handler32:
    incl (UD_COUNT)
    testb $3, 4(%esp)          # CS of the interrupted code
    jnz ud_from_user32
    addl $3, (%esp)
    iret
ud_from_user32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movl (SAVED_ESP), %esp
    jmp after_user32

fail_page:
    movl $msg_bad_page, %esi
    jmp fail32
fail_page_write:
    movl $msg_page_written, %esi
    jmp fail32
fail_output:
    movl $msg_bad_output, %esi
    jmp fail32
fail_cpl3:
    movl $msg_bad_cpl3, %esi
    jmp fail32
fail_case:
    pushl %eax
    pushl %edx
    movl $msg_case, %esi
    call puts32
    movl %ebp, %eax
    subl $hv_cases, %eax
    shrl $5, %eax
    call hex8_32
    movl $msg_got, %esi
    call puts32
    popl %eax
    call hex32_32
    popl %eax
    call hex32_32
    movl $msg_want, %esi
    call puts32
    movl 0x1C(%ebp), %eax
    call hex32_32
    movl 0x18(%ebp), %eax
    call hex32_32
    movl $msg_nl, %esi
    jmp fail32

idt_ptr32:
    .word 0x7FF
    .long IDT

.p2align 3, 0
.include "hv_cases.inc"

.include "lib32.inc"
.include "hv32.inc"
.include "hv.inc"
.include "lib.inc"
