# syntax: att
# guest: hardware task switches in 32-bit protected mode: CALL/JMP to a TSS and a task gate, IRET with NT, IDT task gates for INT n, #DE, #DF and #PF, and the #GP/#TS/#NP checks
#
# Enters 32-bit protected mode with 4 MiB-page paging (page directory PD1), loads TR with the
# main task's TSS and switches to other tasks in every way the Intel SDM Vol. 3A chapter 7
# describes.  Each task records what it sees on entry (TR, the back link in its TSS, EFLAGS.NT,
# CR0.TS, CR3, the busy flags of its own and the main task's TSS descriptors, the EIP saved in
# the main task's TSS, ESP and the error code on its stack) and the main task checks it:
#   lcall to a TSS descriptor, IRET back (SDM 7.3, 7.4: back link, NT, busy flags kept);
#   ljmp to a GDT task gate, ljmp back (no back link, the old task's busy flag cleared);
#   INT 40h through an IDT task gate (SDM 6.12.2), with the new task's registers from its TSS;
#   #DE through a task gate: the saved EIP is the faulting DIV, no error code pushed;
#   #PF whose IDT gate is not present: #NP during delivery becomes #DF (SDM Table 6-5), which
#     goes through a task gate with error code 0 on that task's stack; it installs a task gate
#     for #PF, and the retried store's #PF runs a task with its own CR3 (PD2) and error code 2
#     on its stack, which maps the page in PD1 so the store completes after its IRET;
#   checks before the switch: ljmp or INT n to the busy main TSS (#GP), lcall or INT n to a TSS
#     whose limit is below 67h (#TS), lcall to a not-present TSS (#NP), error code = selector.
# Serial output:  lcall TSS ok
#                 ljmp task gate ok
#                 INT 40h task gate ok
#                 #DE task gate ok
#                 #DF and #PF task gates ok
#                 busy/limit/present checks ok
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: the check, what it got and what it wanted).

.include "boot.inc"
.include "gdt.inc"

.set PD1, 0x1000               # the main task's page directory (0-4 MiB, one 4 MiB page)
.set PD2, 0x2000               # the #PF task's page directory (the same mapping)
.set IDT, 0x3000
.set MAIN_TSS, 0x4000          # TSSes: 68h bytes each, 100h apart
.set B_TSS, 0x4100
.set C_TSS, 0x4200
.set D_TSS, 0x4300
.set DE_TSS, 0x4400
.set PF_TSS, 0x4500
.set DF_TSS, 0x4600
.set SHORT_TSS, 0x4700
.set FAR_PAGE, 0x400000        # not mapped until the #PF task maps it (to physical 0)
.set TARGET, VARS+0x40         # FAR_PAGE+TARGET aliases physical TARGET once mapped
# Variables (dwords).
.set RESUME, VARS              # where the fault handlers resume
.set FAULT_VEC, VARS+0x04
.set FAULT_ERR, VARS+0x08
.set OBS_TR, VARS+0x10         # what the last task's observe recorded
.set OBS_LINK, VARS+0x14
.set OBS_FLAGS, VARS+0x18
.set OBS_CR0, VARS+0x1C
.set OBS_CR3, VARS+0x20
.set OBS_MAIN, VARS+0x24       # type byte of the main TSS descriptor
.set OBS_OWN, VARS+0x28        # type byte of the task's own TSS descriptor
.set OBS_EIP, VARS+0x2C        # EIP saved in the main TSS
.set OBS_ESP, VARS+0x30
.set OBS_ERR, VARS+0x34
.set OBS_EAX, VARS+0x38
.set PF_ERR, VARS+0x50         # the #PF task's own observations
.set PF_CR2, VARS+0x54
.set PF_CR3, VARS+0x58
.set PF_LINK, VARS+0x5C
.set PF_TR, VARS+0x60

.macro expect var, val, msg
    movl \var, %eax
    movl \val, %edx
    movl \msg, %esi
    call expect32
.endm

main:
    cli
    xorl %eax, %eax            # page directories, IDT, TSSes and stacks (1000h-6FFFh)
    movw $0x1000, %di
    movl $0x1800, %ecx
    rep stosl
    movw $VARS, %di
    movl $0x40, %ecx
    rep stosl
    lgdt gdt_ptr
    jmp hv_enter_protected_mode

gdt_head GDT_CODE32
    .quad 0x0000890040000067   # 18h main TSS (available until LTR)
    .quad 0x0000890041000067   # 20h task B
    .quad 0x0000890042000067   # 28h task C
    .quad 0x0000890043000067   # 30h task D (INT 40h)
    .quad 0x0000890044000067   # 38h #DE task
    .quad 0x0000890045000067   # 40h #PF task
    .quad 0x0000890046000067   # 48h #DF task
    .quad 0x0000890047000050   # 50h TSS with a limit below 67h
    .quad 0x0000090047000067   # 58h TSS not present
    .quad 0x0000850000280000   # 60h task gate -> 28h (task C)
gdt_tail
idt_ptr32:
    .word 0x7FF
    .long IDT

.code32
pm_entry:
    movw $0x10, %ax            # FS and GS still hold real-mode values: a task switch back
    movw %ax, %fs              # to this task would load them from its TSS (#TS)
    movw %ax, %gs
    movl $0x83, (PD1)          # 4 MiB page at 0, present, writable
    movl $0x83, (PD2)
    movl %cr4, %eax
    orl $0x10, %eax            # PSE
    movl %eax, %cr4
    movl $PD1, %eax
    movl %eax, %cr3
    movl %cr0, %eax
    orl $0x80000000, %eax
    movl %eax, %cr0
    movl $PD1, (MAIN_TSS+0x1C) # the task switch back loads CR3 from here
    movl $B_TSS, %edi
    movl $task_b, %eax
    movl $0x5400, %edx
    call init_tss
    movl $C_TSS, %edi
    movl $task_c, %eax
    movl $0x5800, %edx
    call init_tss
    movl $D_TSS, %edi
    movl $task_d, %eax
    movl $0x5C00, %edx
    call init_tss
    movl $0xD0D0D0D0, (D_TSS+0x28)  # EAX of task D
    movl $DE_TSS, %edi
    movl $task_de, %eax
    movl $0x6000, %edx
    call init_tss
    movl $PF_TSS, %edi
    movl $task_pf, %eax
    movl $0x6400, %edx
    call init_tss
    movl $PD2, (PF_TSS+0x1C)
    movl $DF_TSS, %edi
    movl $task_df, %eax
    movl $0x6800, %edx
    call init_tss
    movl $0x0D, %edi
    movl $gp_isr, %eax
    call set_gate
    movl $0x0A, %edi
    movl $ts_isr, %eax
    call set_gate
    movl $0x0B, %edi
    movl $np_isr, %eax
    call set_gate
    movl $0x00, %edi              # task gates (type 85h): #DE, #DF, INT 40h-42h
    movl $0x38, %eax
    call set_task_gate
    movl $0x08, %edi
    movl $0x48, %eax
    call set_task_gate
    movl $0x40, %edi
    movl $0x30, %eax
    call set_task_gate
    movl $0x41, %edi
    movl $0x18, %eax
    call set_task_gate
    movl $0x42, %edi
    movl $0x50, %eax
    call set_task_gate
    lidt idt_ptr32
    movw $0x18, %ax
    ltr %ax

# ---- lcall to a TSS descriptor, IRET back (the engine's own task switch)
    movl $0x5A5A5A5A, %ebp     # kept across the switches by the main TSS
    .byte 0x9A                 # lcall 20h:0
    .long 0
    .word 0x20
after_lcall:
    expect (OBS_TR), $0x20, $m_b_tr
    expect (OBS_LINK), $0x18, $m_b_link
    movl (OBS_FLAGS), %eax
    andl $0x4000, %eax
    expect %eax, $0x4000, $m_b_nt
    movl (OBS_CR0), %eax
    andl $0x08, %eax
    expect %eax, $0x08, $m_b_ts
    expect (OBS_MAIN), $0x8B, $m_b_mainbusy
    expect (OBS_OWN), $0x8B, $m_b_ownbusy
    expect (OBS_EIP), $after_lcall, $m_b_eip
    pushfl
    popl %eax
    andl $0x4000, %eax
    expect %eax, $0x00, $m_b_ntback
    movzbl (gdt+0x20+0x05), %eax
    expect %eax, $0x89, $m_b_free
    expect %ebp, $0x5A5A5A5A, $m_b_ebp
    movl $msg_lcall, %esi
    call puts32

# ---- ljmp to a GDT task gate, the task ljmps back to the main TSS
    .byte 0xEA                 # ljmp 60h:0 (task gate -> task C)
    .long 0
    .word 0x60
after_ljmp:
    expect (OBS_TR), $0x28, $m_c_tr
    expect (OBS_LINK), $0x00, $m_c_link
    movl (OBS_FLAGS), %eax
    andl $0x4000, %eax
    expect %eax, $0x00, $m_c_nt
    expect (OBS_MAIN), $0x89, $m_c_mainfree
    expect (OBS_OWN), $0x8B, $m_c_ownbusy
    movzbl (gdt+0x28+0x05), %eax
    expect %eax, $0x89, $m_c_free
    movzbl (gdt+0x18+0x05), %eax
    expect %eax, $0x8B, $m_c_mainbusy
    movl $msg_ljmp, %esi
    call puts32

# ---- INT 40h through an IDT task gate (the hypervisor's task switch)
    movl $0x12345678, %eax
    int $0x40
after_int:
    expect %eax, $0x12345678, $m_d_eaxback
    expect (OBS_EAX), $0xD0D0D0D0, $m_d_eax
    expect (OBS_TR), $0x30, $m_d_tr
    expect (OBS_LINK), $0x18, $m_d_link
    movl (OBS_FLAGS), %eax
    andl $0x4000, %eax
    expect %eax, $0x4000, $m_d_nt
    movl (OBS_CR0), %eax
    andl $0x08, %eax
    expect %eax, $0x08, $m_d_ts
    expect (OBS_MAIN), $0x8B, $m_d_mainbusy
    expect (OBS_OWN), $0x8B, $m_d_ownbusy
    expect (OBS_EIP), $after_int, $m_d_eip
    expect (OBS_ESP), $0x5C00, $m_d_esp
    movzbl (gdt+0x30+0x05), %eax
    expect %eax, $0x89, $m_d_free
    expect %ebp, $0x5A5A5A5A, $m_d_ebp
    movl $msg_int, %esi
    call puts32

# ---- #DE through a task gate: a fault, so the main TSS holds the DIV's own address
    xorl %ecx, %ecx
    movl $0x64, %eax
    xorl %edx, %edx
div_insn:
    divl %ecx                  # F7 F1: the #DE task steps the saved EIP over it
    expect (OBS_TR), $0x38, $m_de_tr
    expect (OBS_EIP), $div_insn, $m_de_eip
    expect (OBS_ESP), $0x6000, $m_de_esp
    movl $msg_de, %esi
    call puts32

# ---- #PF with a not-present IDT gate -> #NP -> #DF (task gate) -> #PF task gate
pf_insn:
    movl $0xC0FFEE, (FAR_PAGE+TARGET)
    expect (TARGET), $0xC0FFEE, $m_pf_store
    expect (OBS_TR), $0x48, $m_df_tr
    expect (OBS_LINK), $0x18, $m_df_link
    expect (OBS_ERR), $0x00, $m_df_err
    expect (OBS_ESP), $0x67FC, $m_df_esp
    expect (OBS_EIP), $pf_insn, $m_df_eip
    expect (PF_TR), $0x40, $m_pf_tr
    expect (PF_LINK), $0x18, $m_pf_link
    expect (PF_ERR), $0x02, $m_pf_err
    expect (PF_CR2), $(FAR_PAGE+TARGET), $m_pf_cr2
    expect (PF_CR3), $PD2, $m_pf_cr3
    movl %cr3, %eax
    expect %eax, $PD1, $m_pf_cr3back
    movl $msg_dfpf, %esi
    call puts32

# ---- checks before the switch: #GP busy, #TS limit, #NP not present
    movl $r1, (RESUME)
    .byte 0xEA                 # ljmp 18h:0 -> the main TSS is busy: #GP(18h)
    .long 0
    .word 0x18
r1:
    expect (FAULT_VEC), $0x0D, $m_busy_vec
    expect (FAULT_ERR), $0x18, $m_busy_err
    movl $r2, (RESUME)
    int $0x41                  # task gate -> the busy main TSS: #GP(18h)
r2:
    expect (FAULT_VEC), $0x0D, $m_ibusy_vec
    expect (FAULT_ERR), $0x18, $m_ibusy_err
    movl $r3, (RESUME)
    .byte 0x9A                 # lcall 50h:0 -> limit 50h: #TS(50h)
    .long 0
    .word 0x50
r3:
    expect (FAULT_VEC), $0x0A, $m_limit_vec
    expect (FAULT_ERR), $0x50, $m_limit_err
    movl $r4, (RESUME)
    int $0x42                  # task gate -> the same TSS: #TS(50h)
r4:
    expect (FAULT_VEC), $0x0A, $m_ilimit_vec
    expect (FAULT_ERR), $0x50, $m_ilimit_err
    movl $r5, (RESUME)
    .byte 0x9A                 # lcall 58h:0 -> not present: #NP(58h)
    .long 0
    .word 0x58
r5:
    expect (FAULT_VEC), $0x0B, $m_np_vec
    expect (FAULT_ERR), $0x58, $m_np_err
    str %ax
    movzwl %ax, %eax
    expect %eax, $0x18, $m_tr_end
    movl $msg_checks, %esi
    call puts32
    jmp pass32

# ---- the tasks
task_b:
    movl $B_TSS, %esi
    movl $0x20, %ebx
    call observe
    iret
    jmp task_b

task_c:
    movl $C_TSS, %esi
    movl $0x28, %ebx
    call observe
    .byte 0xEA                 # ljmp 18h:0 back to the main task
    .long 0
    .word 0x18
    jmp task_c

task_d:
    movl %eax, (OBS_EAX)
    movl %esp, (OBS_ESP)
    movl $D_TSS, %esi
    movl $0x30, %ebx
    call observe
    iret
    jmp task_d

task_de:
    movl %esp, (OBS_ESP)
    movl $DE_TSS, %esi
    movl $0x38, %ebx
    call observe
    addl $0x02, (MAIN_TSS+0x20)   # past the 2-byte DIV
    iret
    jmp task_de

task_df:
    movl %esp, (OBS_ESP)
    movl (%esp), %eax
    movl %eax, (OBS_ERR)
    movl $DF_TSS, %esi
    movl $0x48, %ebx
    call observe
    movl $0x0E, %edi             # #PF goes to the #PF task from now on
    movl $0x40, %eax
    call set_task_gate
    addl $0x04, %esp              # the error code
    iret
    jmp task_df

task_pf:
    movl (%esp), %eax
    movl %eax, (PF_ERR)
    movl %cr2, %eax
    movl %eax, (PF_CR2)
    movl %cr3, %eax
    movl %eax, (PF_CR3)
    movzwl (PF_TSS), %eax
    movl %eax, (PF_LINK)
    str %ax
    movzwl %ax, %eax
    movl %eax, (PF_TR)
    movl $0x83, (PD1+0x04)        # FAR_PAGE -> physical 0 in the main task's directory
    addl $0x04, %esp
    iret
    jmp task_pf

# observe: record what the running task sees (ESI = its TSS, EBX = its selector).
observe:
    str %ax
    movzwl %ax, %eax
    movl %eax, (OBS_TR)
    movzwl (%esi), %eax
    movl %eax, (OBS_LINK)
    pushfl
    popl %eax
    movl %eax, (OBS_FLAGS)
    movl %cr0, %eax
    movl %eax, (OBS_CR0)
    movl %cr3, %eax
    movl %eax, (OBS_CR3)
    movzbl (gdt+0x18+0x05), %eax
    movl %eax, (OBS_MAIN)
    movzbl gdt+0x05(%ebx), %eax
    movl %eax, (OBS_OWN)
    movl (MAIN_TSS+0x20), %eax
    movl %eax, (OBS_EIP)
    ret

# init_tss: a ring-0 TSS at EDI starting at EAX with ESP = EDX, CR3 = PD1, flat segments.
init_tss:
    pushl %eax
    pushl %edi
    xorl %eax, %eax
    movl $0x1A, %ecx
    rep stosl
    popl %edi
    popl %eax
    movl $PD1, 0x1C(%edi)
    movl %eax, 0x20(%edi)
    movl $0x02, 0x24(%edi)
    movl %edx, 0x38(%edi)
    movl $0x10, 0x48(%edi)     # ES
    movl $0x08, 0x4C(%edi)     # CS
    movl $0x10, 0x50(%edi)     # SS
    movl $0x10, 0x54(%edi)     # DS
    movl $0x10, 0x58(%edi)     # FS
    movl $0x10, 0x5C(%edi)     # GS
    movw $0x68, 0x66(%edi)     # no I/O bitmap
    ret

# set_task_gate: IDT entry EDI = task gate to the TSS selector in AX (SDM 6.11).
set_task_gate:
    leal IDT(,%edi,8), %edi
    shll $0x10, %eax
    movl %eax, (%edi)
    movl $0x8500, 0x04(%edi)
    ret

# The #GP/#TS/#NP handlers: record vector and error code, resume at RESUME.
gp_isr:
    movl $0x0D, (FAULT_VEC)
    jmp fault_common
ts_isr:
    movl $0x0A, (FAULT_VEC)
    jmp fault_common
np_isr:
    movl $0x0B, (FAULT_VEC)
fault_common:
    pushl %eax
    movl 0x04(%esp), %eax
    movl %eax, (FAULT_ERR)
    movl (RESUME), %eax
    movl %eax, 0x08(%esp)
    popl %eax
    addl $0x04, %esp
    iret

# expect32: fail with "<ESI> got EAX want EDX" unless EAX = EDX.
expect32:
    cmpl %edx, %eax
    jne expect32_fail
    ret
expect32_fail:
    pushl %esi
    movl $lib32_fail_msg, %esi
    call puts32
    popl %esi
    call puts32
    movl $msg_got, %esi
    call puts32
    call hex32_32
    movl $msg_want, %esi
    call puts32
    movl %edx, %eax
    call hex32_32
    call newline32
    movb $0x01, %al
    jmp lib32_exit

msg_lcall:      .asciz "lcall TSS ok\r\n"
msg_ljmp:       .asciz "ljmp task gate ok\r\n"
msg_int:        .asciz "INT 40h task gate ok\r\n"
msg_de:         .asciz "#DE task gate ok\r\n"
msg_dfpf:       .asciz "#DF and #PF task gates ok\r\n"
msg_checks:     .asciz "busy/limit/present checks ok\r\n"
msg_got:        .asciz " got "
msg_want:       .asciz " want "
m_b_tr:         .asciz "lcall: TR in the task"
m_b_link:       .asciz "lcall: back link"
m_b_nt:         .asciz "lcall: NT in the task"
m_b_ts:         .asciz "lcall: CR0.TS in the task"
m_b_mainbusy:   .asciz "lcall: main TSS busy in the task"
m_b_ownbusy:    .asciz "lcall: own TSS busy in the task"
m_b_eip:        .asciz "lcall: EIP saved in the main TSS"
m_b_ntback:     .asciz "lcall: NT after IRET"
m_b_free:       .asciz "lcall: task TSS not busy after IRET"
m_b_ebp:        .asciz "lcall: EBP after IRET"
m_c_tr:         .asciz "ljmp: TR in the task"
m_c_link:       .asciz "ljmp: back link (must stay 0)"
m_c_nt:         .asciz "ljmp: NT in the task"
m_c_mainfree:   .asciz "ljmp: main TSS not busy in the task"
m_c_ownbusy:    .asciz "ljmp: own TSS busy in the task"
m_c_free:       .asciz "ljmp: task TSS not busy after ljmp back"
m_c_mainbusy:   .asciz "ljmp: main TSS busy after ljmp back"
m_d_eaxback:    .asciz "INT 40h: EAX after IRET"
m_d_eax:        .asciz "INT 40h: EAX loaded from the task's TSS"
m_d_tr:         .asciz "INT 40h: TR in the task"
m_d_link:       .asciz "INT 40h: back link"
m_d_nt:         .asciz "INT 40h: NT in the task"
m_d_ts:         .asciz "INT 40h: CR0.TS in the task"
m_d_mainbusy:   .asciz "INT 40h: main TSS busy in the task"
m_d_ownbusy:    .asciz "INT 40h: own TSS busy in the task"
m_d_eip:        .asciz "INT 40h: EIP saved in the main TSS"
m_d_esp:        .asciz "INT 40h: ESP in the task (no error code)"
m_d_free:       .asciz "INT 40h: task TSS not busy after IRET"
m_d_ebp:        .asciz "INT 40h: EBP after IRET"
m_de_tr:        .asciz "#DE: TR in the task"
m_de_eip:       .asciz "#DE: EIP saved in the main TSS"
m_de_esp:       .asciz "#DE: ESP in the task (no error code)"
m_pf_store:     .asciz "#PF: the retried store"
m_df_tr:        .asciz "#DF: TR in the task"
m_df_link:      .asciz "#DF: back link"
m_df_err:       .asciz "#DF: error code on the task's stack"
m_df_esp:       .asciz "#DF: ESP in the task"
m_df_eip:       .asciz "#DF: EIP saved in the main TSS"
m_pf_tr:        .asciz "#PF: TR in the task"
m_pf_link:      .asciz "#PF: back link"
m_pf_err:       .asciz "#PF: error code on the task's stack"
m_pf_cr2:       .asciz "#PF: CR2"
m_pf_cr3:       .asciz "#PF: CR3 loaded from the task's TSS"
m_pf_cr3back:   .asciz "#PF: CR3 after IRET to the main task"
m_busy_vec:     .asciz "ljmp to a busy TSS: vector"
m_busy_err:     .asciz "ljmp to a busy TSS: error code"
m_ibusy_vec:    .asciz "INT n to a busy TSS: vector"
m_ibusy_err:    .asciz "INT n to a busy TSS: error code"
m_limit_vec:    .asciz "lcall to a short TSS: vector"
m_limit_err:    .asciz "lcall to a short TSS: error code"
m_ilimit_vec:   .asciz "INT n to a short TSS: vector"
m_ilimit_err:   .asciz "INT n to a short TSS: error code"
m_np_vec:       .asciz "lcall to a not-present TSS: vector"
m_np_err:       .asciz "lcall to a not-present TSS: error code"
m_tr_end:       .asciz "TR at the end"

.include "lib32.inc"
.include "hv32.inc"
