# syntax: att
# guest: Hyper-V SynIC from 64-bit long mode: SIM/SIEF pages, SINTs through the local APIC, host messages with EOM/pending, PostMessage/SignalEvent, synthetic timers
# needs: host-ports
#
# Enables the hypercall page in real mode, masks the 8259s and enters long mode (0-2 MiB and
# the xAPIC page identity mapped).  Then, with the local APIC software-enabled:
#  * SVERSION reads 1, and writing it or an unmasked SINT with vector 5 raises #GP;
#  * SIMP = 22000h, SIEFP = 23000h, SINT2 = 52h, SINT3 = 53h with AutoEOI, SINT4 = 54h,
#    SCONTROL = 1;
#  * HvCallPostMessage "ping" (type 42h) on connection 1001h, a port the host test listens on;
#    the host answers with three messages (types 101h-103h, "hst1".."hst3") to SINT2: each
#    arrives by interrupt, the first two with MessagePending set, and the guest clears the slot
#    and writes EOM while the flag is set;
#  * an unknown connection gives HV_STATUS_INVALID_CONNECTION_ID;
#  * HvCallSignalEvent (fast) flag 3 on connection 1002h (host-listened event port), and flag 1
#    on 1004h, an event port of the guest's own (SINT4, base flag 10): bit 11 of SIEF slot 4 is
#    set with one interrupt; signalled again while set, no interrupt; cleared, signalled, one;
#  * STIMER0 periodic (period 1000 = 100 us) on SINT3: three HvMessageTimerExpired messages with
#    timer index 0, expirations exactly one period apart and delivery >= expiration;
#  * STIMER1 one-shot at TIME_REF_COUNT + 500: one message, index 1, that expiration, and the
#    enable bit clears itself;
#  * HvCallPostMessage "done" (type 43h) with the interrupt counts as payload.
# Serial output:  synic ok
#                 host messages ok
#                 events ok
#                 periodic ok
#                 one-shot ok
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"
.include "gdt.inc"
.include "hv_lm.inc"
.include "hv_synic.inc"

# Variables at VARS (addressed through R15): interrupt counts and scratch.
.set N52, 0x00
.set N53, 0x08
.set N54, 0x10
.set NGP, 0x18
.set LASTEXP, 0x20
.set ONESHOT, 0x28

main:
    hv_lm_start lm

.code64
long_entry:                    # data segments 10h, RSP 7C00h (hv64.inc)
    movq $VARS, %r15
    movq %r15, %rdi
    xorl %eax, %eax
    movl $8, %ecx
    rep stosq
    movq $0xD, %rdi
    movq $gp_handler, %rax
    call set_gate
    movq $0x52, %rdi
    movq $isr52, %rax
    call set_gate
    movq $0x53, %rdi
    movq $isr53, %rax
    call set_gate
    movq $0x54, %rdi
    movq $isr54, %rax
    call set_gate
    lidt idt_ptr
    movq $APIC+0xF0, %rbx      # spurious-vector register: APIC software enable
    movl $0x1FF, (%rbx)
    # SVERSION reads 1 and is read-only; an unmasked SINT needs a vector >= 16.
    movl $0x40000081, %ecx
    rdmsr
    cmpl $1, %eax
    jne fail_sversion
    wrmsr
    cmpl $1, NGP(%r15)
    jne fail_gp
    movl $0x40000092, %ecx
    movl $5, %eax
    xorl %edx, %edx
    wrmsr
    cmpl $2, NGP(%r15)
    jne fail_gp
    # The SynIC.
    hv_synic_enable SIMP, SIEFP
    movl $0x40000083, %ecx
    rdmsr
    cmpl $SIMP+1, %eax
    jne fail_simp
    movq $msg_synic_ok, %rsi
    call puts64
    sti

    # ---- PostMessage "ping" to the host; three host messages come back on SINT2 ----
    movl $0x42, %eax
    movl $0x676E6970, %edx     # "ping"
    movl $MSG_CONN, %ecx
    call post_message
    testq %rax, %rax
    jnz fail_post
    movq $SIMP+0x200, %rbx     # slot 2
    movl $0x101, %r12d
    movl $0x31747368, %r13d    # "hst1"
host_loop:
    movl $N52, %esi
    leal -0x100(%r12), %edi    # wait for interrupt number (type - 100h)
    call wait_count
    cmpl %r12d, (%rbx)
    jne fail_host_type
    cmpb $4, 4(%rbx)
    jne fail_host_type
    cmpl %r13d, 0x10(%rbx)
    jne fail_host_payload
    movb 5(%rbx), %al          # MessagePending: set on the first two, clear on the last
    andb $1, %al
    xorb %cl, %cl
    cmpl $0x103, %r12d
    je pend_cmp
    movb $1, %cl
pend_cmp:
    cmpb %cl, %al
    jne fail_pending
    movl $0, (%rbx)            # slot free again (HvMessageTypeNone)
    testb %al, %al
    jz no_eom
    movl $0x40000084, %ecx     # EOM: the hypervisor delivers the next queued message
    xorl %eax, %eax
    xorl %edx, %edx
    wrmsr
no_eom:
    incl %r12d
    addl $0x01000000, %r13d    # "hst2", "hst3"
    cmpl $0x104, %r12d
    jb host_loop
    movq $msg_host_ok, %rsi
    call puts64
    movl $1, %eax              # an unknown connection
    xorl %edx, %edx
    movl $0x7777, %ecx
    call post_message
    cmpq $0x12, %rax           # HV_STATUS_INVALID_CONNECTION_ID
    jne fail_badconn

    # ---- SignalEvent: to the host's event port, then the guest's own (SINT4) ----
    movabsq $EVT_CONN+(3<<0x20), %rdx
    call signal_event
    testq %rax, %rax
    jnz fail_signal
    movabsq $GEVT_CONN+(1<<0x20), %rdx
    call signal_event
    testq %rax, %rax
    jnz fail_signal
    movl $N54, %esi
    movl $1, %edi
    call wait_count
    movq $SIEFP+0x400, %rbx    # SIEF slot 4: flag 10 + 1
    btl $0xB, (%rbx)
    jnc fail_flag
    movabsq $GEVT_CONN+(1<<0x20), %rdx
    call signal_event          # already set: no new interrupt
    nop
    nop
    cmpl $1, N54(%r15)
    jne fail_edge
    lock btrl $0xB, (%rbx)
    movabsq $GEVT_CONN+(1<<0x20), %rdx
    call signal_event          # clear -> set: interrupt
    movl $N54, %esi
    movl $2, %edi
    call wait_count
    movq $msg_events_ok, %rsi
    call puts64

    # ---- STIMER0 periodic on SINT3 ----
    xorl %edx, %edx
    movl $0x400000B1, %ecx     # STIMER0_COUNT: period 1000 (100 us)
    movl $0x3E8, %eax
    wrmsr
    movl $0x400000B0, %ecx     # STIMER0_CONFIG: enable, periodic, SINT3
    movl $0x30003, %eax
    wrmsr
    movq $SIMP+0x300, %rbx     # slot 3
    movl $1, %r12d
tick_loop:
    movl $N53, %esi
    movl %r12d, %edi
    call wait_count
    cmpl $0x80000010, (%rbx)   # HvMessageTimerExpired
    jne fail_timer_msg
    cmpb $0x18, 4(%rbx)
    jne fail_timer_msg
    cmpl $0, 0x10(%rbx)          # timer index 0
    jne fail_timer_msg
    movq 0x18(%rbx), %rax        # expiration
    cmpq %rax, 0x20(%rbx)        # delivery >= expiration
    jb fail_timer_time
    cmpl $1, %r12d
    je first_tick
    movq %rax, %rcx
    subq LASTEXP(%r15), %rcx
    cmpq $0x3E8, %rcx           # exactly one period after the last one
    jne fail_period
first_tick:
    movq %rax, LASTEXP(%r15)
    movb 5(%rbx), %cl
    movl $0, (%rbx)
    testb $1, %cl
    jz tick_next
    movl $0x40000084, %ecx
    xorl %eax, %eax
    xorl %edx, %edx
    wrmsr
tick_next:
    incl %r12d
    cmpl $4, %r12d
    jb tick_loop
    movl $0x400000B0, %ecx     # disable
    xorl %eax, %eax
    xorl %edx, %edx
    wrmsr
    movq $msg_periodic_ok, %rsi
    call puts64

    # ---- STIMER1 one-shot at TIME_REF_COUNT + 500 ----
    movl $0x40000020, %ecx
    rdmsr
    shlq $0x20, %rdx
    orq %rdx, %rax
    addq $0x1F4, %rax
    movq %rax, ONESHOT(%r15)
    movq %rax, %rdx
    shrq $0x20, %rdx
    movl $0x400000B3, %ecx     # STIMER1_COUNT: absolute expiration
    wrmsr
    movl $0x400000B2, %ecx     # STIMER1_CONFIG: enable, SINT3
    movl $0x30001, %eax
    xorl %edx, %edx
    wrmsr
    movl N53(%r15), %edi
    incl %edi
    movl $N53, %esi
    call wait_count
    cmpl $0x80000010, (%rbx)
    jne fail_timer_msg
    cmpl $1, 0x10(%rbx)          # timer index 1
    jne fail_timer_msg
    movq ONESHOT(%r15), %rax
    cmpq %rax, 0x18(%rbx)
    jne fail_oneshot
    cmpq %rax, 0x20(%rbx)
    jb fail_timer_time
    movl $0, (%rbx)
    movl $0x400000B2, %ecx     # a one-shot timer disables itself
    rdmsr
    testb $1, %al
    jnz fail_oneshot_enable
    movq $msg_oneshot_ok, %rsi
    call puts64

    # ---- report the counts to the host and finish ----
    movl $0x43, %eax
    movl N52(%r15), %edx
    shll $8, %edx
    orl N53(%r15), %edx
    shll $8, %edx
    orl N54(%r15), %edx
    movl $MSG_CONN, %ecx
    call post_message
    testq %rax, %rax
    jnz fail_post
    call pass64

# post_message: HvCallPostMessage on connection ECX, type EAX, 4-byte payload EDX -> RAX status.
post_message:
    movq $HV_IN, %rdi
    movl %ecx, (%rdi)
    movl $0, 4(%rdi)
    movl %eax, 8(%rdi)
    movl $4, 0xC(%rdi)
    movl %edx, 0x10(%rdi)
    movq $0x5C, %rcx
    movq %rdi, %rdx
    xorl %r8d, %r8d
    movq $HV_HCPAGE, %rax
    call *%rax
    ret

# signal_event: fast HvCallSignalEvent with RDX = connection | flag << 32 -> RAX status.
signal_event:
    movq $0x1005D, %rcx
    xorl %r8d, %r8d
    movq $HV_HCPAGE, %rax
    call *%rax
    ret

# wait_count: halt until the dword at VARS+ESI reaches EDI (STI; HLT has no wake-up race).
wait_count:
    cli
    cmpl %edi, (%r15,%rsi)
    jae wait_done
    sti
    hlt
    jmp wait_count
wait_done:
    sti
    ret

isr52:
    incl N52(%r15)
    jmp apic_eoi
isr54:
    incl N54(%r15)
apic_eoi:
    pushq %rbx
    movq $APIC+0xB0, %rbx
    movl $0, (%rbx)
    popq %rbx
    iretq
isr53:                         # AutoEOI: no EOI write
    incl N53(%r15)
    iretq
gp_handler:
    incl NGP(%r15)
    addq $8, %rsp              # the error code
    addq $2, (%rsp)            # skip the 2-byte RDMSR/WRMSR
    iretq

fail_sversion:
    movq $msg_sversion, %rsi
    call fail64
fail_gp:
    movq $msg_gpf, %rsi
    call fail64
fail_simp:
    movq $msg_simp, %rsi
    call fail64
fail_post:
    movq $msg_post, %rsi
    call fail64
fail_host_type:
    movq $msg_host_type, %rsi
    call fail64
fail_host_payload:
    movq $msg_host_payload, %rsi
    call fail64
fail_pending:
    movq $msg_pending, %rsi
    call fail64
fail_badconn:
    movq $msg_badconn, %rsi
    call fail64
fail_signal:
    movq $msg_signal, %rsi
    call fail64
fail_flag:
    movq $msg_flag, %rsi
    call fail64
fail_edge:
    movq $msg_edge, %rsi
    call fail64
fail_timer_msg:
    movq $msg_timer_msg, %rsi
    call fail64
fail_timer_time:
    movq $msg_timer_time, %rsi
    call fail64
fail_period:
    movq $msg_period, %rsi
    call fail64
fail_oneshot:
    movq $msg_oneshot, %rsi
    call fail64
fail_oneshot_enable:
    movq $msg_oneshot_enable, %rsi
    call fail64

idt_ptr:
    .word 0xFFF
    .quad IDT
msg_gpf:
    .asciz "SVERSION write or SINT vector 5 did not raise #GP"
msg_simp:
    .asciz "SIMP did not read back"
msg_badconn:
    .asciz "unknown connection did not give INVALID_CONNECTION_ID"
    hv_synic_messages

.include "lib64.inc"
.include "hv64.inc"
.include "hv.inc"
