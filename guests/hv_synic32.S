# syntax: att
# guest: Hyper-V SynIC from 32-bit protected mode (EDX:EAX hypercall convention): host messages with EOM/pending, PostMessage/SignalEvent, synthetic timers
# needs: host-ports
#
# The essentials of hv_synic.S in flat 32-bit protected mode without paging, hypercalls with
# the 32-bit convention (EDX:EAX input value, EBX:ECX input GPA or fast input, EDI:ESI output,
# EDX:EAX result):
#  * SVERSION reads 1 and writing it raises #GP; SIMP 22000h, SIEFP 23000h, SINT2 = 52h,
#    SINT3 = 53h AutoEOI, SINT4 = 54h, SCONTROL = 1, local APIC software-enabled;
#  * PostMessage "ping" (type 42h) on connection 1001h (host-listened); the host's three
#    answers on SINT2 with MessagePending on the first two, cleared + EOM by the guest;
#  * fast SignalEvent flag 3 on 1002h (host), flag 1 on 1004h (own port, SINT4, base 10):
#    an interrupt only on the 0->1 edge of SIEF slot 4 bit 11;
#  * STIMER0 periodic (1000 = 100 us) on SINT3: three messages one period apart; STIMER1
#    one-shot at TIME_REF_COUNT + 500: one message with that expiration, then disabled;
#  * PostMessage "done" (type 43h) with the interrupt counts.
# Serial output:  synic ok
#                 host messages ok
#                 events ok
#                 periodic ok
#                 one-shot ok
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"
.include "gdt.inc"
.include "hv_synic.inc"

.set IDT, 0x4000
.set N52, VARS
.set N53, VARS+0x4
.set N54, VARS+0x8
.set NGP, VARS+0xC
.set LASTEXP, VARS+0x10
.set ONESHOT_LO, VARS+0x14
.set ONESHOT_HI, VARS+0x18
.set TICK, VARS+0x1C

main:
    cli
    movb $0xFF, %al            # mask both 8259s: only the local APIC interrupts
    outb %al, $0x21
    outb %al, $0xA1
    call hv_enable_hypercall_page
    xorl %eax, %eax            # zero the IDT (4000h-47FFh) and the variables
    movw $IDT, %di
    movl $0x200, %ecx
    rep stosl
    movw $VARS, %di
    movl $0x10, %ecx
    rep stosl
    lgdt gdt_ptr
    jmp hv_enter_protected_mode

gdt_head GDT_CODE32
gdt_tail

.code32
pm_entry:                      # data segments 10h, ESP 7C00h (hv32.inc)
    movl $0xD, %edi
    movl $gp_handler, %eax
    call set_gate
    movl $0x52, %edi
    movl $isr52, %eax
    call set_gate
    movl $0x53, %edi
    movl $isr53, %eax
    call set_gate
    movl $0x54, %edi
    movl $isr54, %eax
    call set_gate
    lidt idt_ptr32
    movl $0x1FF, (APIC+0xF0)   # spurious-vector register: APIC software enable
    movl $0x40000081, %ecx     # SVERSION: 1, read-only
    rdmsr
    cmpl $1, %eax
    jne fail_sversion
    wrmsr
    cmpl $1, (NGP)
    jne fail_gp
    hv_synic_enable SIMP, SIEFP
    movl $msg_synic_ok, %esi
    call puts32
    sti

    # ---- PostMessage "ping"; the host's three messages arrive on SINT2 ----
    movl $0x42, %eax
    movl $0x676E6970, %edx     # "ping"
    movl $MSG_CONN, %ecx
    call post_message
    testl %eax, %eax
    jnz fail_post
    movl $SIMP+0x200, %ebx     # slot 2
    movl $0x101, %ebp
    movl $0x31747368, %esi     # "hst1"
host_loop:
    leal -0x100(%ebp), %edi
    movl $N52, %edx
    call wait_count
    cmpl %ebp, (%ebx)
    jne fail_host_type
    cmpb $4, 4(%ebx)
    jne fail_host_type
    cmpl %esi, 0x10(%ebx)
    jne fail_host_payload
    movb 5(%ebx), %al          # MessagePending on the first two, clear on the last
    andb $1, %al
    xorb %cl, %cl
    cmpl $0x103, %ebp
    je pend_cmp
    movb $1, %cl
pend_cmp:
    cmpb %cl, %al
    jne fail_pending
    movl $0, (%ebx)
    testb %al, %al
    jz no_eom
    call eom
no_eom:
    incl %ebp
    addl $0x01000000, %esi
    cmpl $0x104, %ebp
    jb host_loop
    movl $msg_host_ok, %esi
    call puts32

    # ---- SignalEvent: host event port, then the guest's own on SINT4 ----
    movl $EVT_CONN, %ecx
    movl $3, %ebx
    call signal_event
    testl %eax, %eax
    jnz fail_signal
    movl $GEVT_CONN, %ecx
    movl $1, %ebx
    call signal_event
    testl %eax, %eax
    jnz fail_signal
    movl $1, %edi
    movl $N54, %edx
    call wait_count
    btl $0xB, (SIEFP+0x400)    # flag 10 + 1 of SINT4
    jnc fail_flag
    movl $GEVT_CONN, %ecx
    movl $1, %ebx
    call signal_event          # already set: no interrupt
    nop
    cmpl $1, (N54)
    jne fail_edge
    lock btrl $0xB, (SIEFP+0x400)
    movl $GEVT_CONN, %ecx
    movl $1, %ebx
    call signal_event
    movl $2, %edi
    movl $N54, %edx
    call wait_count
    movl $msg_events_ok, %esi
    call puts32

    # ---- STIMER0 periodic on SINT3 ----
    xorl %edx, %edx
    movl $0x400000B1, %ecx     # period 1000
    movl $0x3E8, %eax
    wrmsr
    movl $0x400000B0, %ecx     # enable, periodic, SINT3
    movl $0x30003, %eax
    wrmsr
    movl $SIMP+0x300, %ebx     # slot 3
    movl $1, (TICK)
tick_loop:
    movl (TICK), %edi
    movl $N53, %edx
    call wait_count
    call check_timer_msg
    cmpl $0, 0x10(%ebx)        # timer index 0
    jne fail_timer_msg
    movl 0x18(%ebx), %eax      # expiration (low dword)
    cmpl $1, (TICK)
    je first_tick
    movl %eax, %ecx
    subl (LASTEXP), %ecx
    cmpl $0x3E8, %ecx          # one period after the last expiration
    jne fail_period
first_tick:
    movl %eax, (LASTEXP)
    call free_slot
    incl (TICK)
    cmpl $4, (TICK)
    jb tick_loop
    movl $0x400000B0, %ecx
    xorl %eax, %eax
    xorl %edx, %edx
    wrmsr
    movl $msg_periodic_ok, %esi
    call puts32

    # ---- STIMER1 one-shot at TIME_REF_COUNT + 500 ----
    movl $0x40000020, %ecx
    rdmsr
    addl $0x1F4, %eax
    adcl $0, %edx
    movl %eax, (ONESHOT_LO)
    movl %edx, (ONESHOT_HI)
    movl $0x400000B3, %ecx
    wrmsr
    movl $0x400000B2, %ecx     # enable, SINT3
    movl $0x30001, %eax
    xorl %edx, %edx
    wrmsr
    movl (N53), %edi
    incl %edi
    movl $N53, %edx
    call wait_count
    call check_timer_msg
    cmpl $1, 0x10(%ebx)        # timer index 1
    jne fail_timer_msg
    movl (ONESHOT_LO), %eax
    cmpl %eax, 0x18(%ebx)
    jne fail_oneshot
    movl (ONESHOT_HI), %eax
    cmpl %eax, 0x1C(%ebx)
    jne fail_oneshot
    call free_slot
    movl $0x400000B2, %ecx
    rdmsr
    testb $1, %al
    jnz fail_oneshot_enable
    movl $msg_oneshot_ok, %esi
    call puts32

    movl $0x43, %eax           # report the interrupt counts
    movl (N52), %edx
    shll $8, %edx
    orl (N53), %edx
    shll $8, %edx
    orl (N54), %edx
    movl $MSG_CONN, %ecx
    call post_message
    testl %eax, %eax
    jnz fail_post
    call pass32

# post_message: connection ECX, type EAX, 4-byte payload EDX -> EAX status (EDX:EAX result).
post_message:
    movl %ecx, (HV_IN)
    movl $0, (HV_IN+4)
    movl %eax, (HV_IN+8)
    movl $4, (HV_IN+0xC)
    movl %edx, (HV_IN+0x10)
    pushl %ebx
    pushl %esi
    pushl %edi
    movl $0x5C, %eax           # input value EDX:EAX
    xorl %edx, %edx
    xorl %ebx, %ebx            # input GPA EBX:ECX
    movl $HV_IN, %ecx
    xorl %edi, %edi            # no output: EDI:ESI = 0
    xorl %esi, %esi
    call hypercall
    popl %edi
    popl %esi
    popl %ebx
    ret

# signal_event: fast call, connection ECX, flag number EBX (input qword EBX:ECX) -> EAX.
signal_event:
    pushl %esi
    pushl %edi
    shll $0x10, %ebx           # FlagNumber is bits 47:32, i.e. EBX 15:0
    shrl $0x10, %ebx
    movl $0x1005D, %eax
    xorl %edx, %edx
    xorl %edi, %edi
    xorl %esi, %esi
    call hypercall
    popl %edi
    popl %esi
    ret

hypercall:
    pushl %ebp
    movl $HV_HCPAGE, %ebp
    call *%ebp
    popl %ebp
    ret

eom:
    pushl %eax
    pushl %ecx
    pushl %edx
    movl $0x40000084, %ecx
    xorl %eax, %eax
    xorl %edx, %edx
    wrmsr
    popl %edx
    popl %ecx
    popl %eax
    ret

# check_timer_msg: slot EBX holds HvMessageTimerExpired, 24 bytes, delivery >= expiration.
check_timer_msg:
    cmpl $0x80000010, (%ebx)
    jne fail_timer_msg
    cmpb $0x18, 4(%ebx)
    jne fail_timer_msg
    movl 0x24(%ebx), %eax      # delivery high vs expiration high
    cmpl 0x1C(%ebx), %eax
    ja timer_ok
    jb fail_timer_time
    movl 0x20(%ebx), %eax
    cmpl 0x18(%ebx), %eax
    jb fail_timer_time
timer_ok:
    ret

# free_slot: clear slot EBX's type; EOM if MessagePending was set.
free_slot:
    movb 5(%ebx), %al
    movl $0, (%ebx)
    testb $1, %al
    jz free_done
    call eom
free_done:
    ret

# wait_count: halt until the dword at EDX reaches EDI.
wait_count:
    cli
    cmpl %edi, (%edx)
    jae wait_done
    sti
    hlt
    jmp wait_count
wait_done:
    sti
    ret

isr52:
    incl (N52)
    jmp apic_eoi
isr54:
    incl (N54)
apic_eoi:
    movl $0, (APIC+0xB0)
    iret
isr53:                         # AutoEOI: no EOI write
    incl (N53)
    iret
gp_handler:
    incl (NGP)
    addl $4, %esp              # the error code
    addl $2, (%esp)            # skip the 2-byte RDMSR/WRMSR
    iret

fail_sversion:
    movl $msg_sversion, %esi
    call fail32
fail_gp:
    movl $msg_gpf, %esi
    call fail32
fail_post:
    movl $msg_post, %esi
    call fail32
fail_host_type:
    movl $msg_host_type, %esi
    call fail32
fail_host_payload:
    movl $msg_host_payload, %esi
    call fail32
fail_pending:
    movl $msg_pending, %esi
    call fail32
fail_signal:
    movl $msg_signal, %esi
    call fail32
fail_flag:
    movl $msg_flag, %esi
    call fail32
fail_edge:
    movl $msg_edge, %esi
    call fail32
fail_timer_msg:
    movl $msg_timer_msg, %esi
    call fail32
fail_timer_time:
    movl $msg_timer_time, %esi
    call fail32
fail_period:
    movl $msg_period, %esi
    call fail32
fail_oneshot:
    movl $msg_oneshot, %esi
    call fail32
fail_oneshot_enable:
    movl $msg_oneshot_enable, %esi
    call fail32

idt_ptr32:
    .word 0x7FF
    .long IDT
msg_gpf:
    .asciz "SVERSION write did not raise #GP"
    hv_synic_messages

.include "lib32.inc"
.include "hv32.inc"
.include "hv.inc"
