# syntax: att
# guest: VMBus from 64-bit long mode: connect with version fallback, offers, GPADLs, open the heartbeat and shutdown ICs, answer heartbeats, shut down when the host asks
# needs: ic-shutdown
#
# A guest VMBus driver (VSC) in assembly, following Linux's hv_vmbus/hv_utils where HYPERV_FACTS
# 5-7 is silent.  Enables the hypercall page in real mode and enters long mode (0-2 MiB and the
# xAPIC identity mapped), then:
#  * SynIC: SIMP = 22000h, SIEFP = 23000h, SINT2 = vector 52h (EOI through the xAPIC), SCONTROL;
#  * INITIATE_CONTACT with each version of `versions` in turn, newest first (6.0 is OpenVMM's
#    own, which a Windows-like host refuses): 5.0 and later on connection 4 with msg_sint 2,
#    older ones on connection 1; a refused version (VERSION_RESPONSE with version_supported 0)
#    or a missing connection 4 (HV_STATUS_INVALID_CONNECTION_ID) moves on to the next;
#    later messages go to the msg_conn_id of the response (5.0+) or connection 1;
#  * REQUESTOFFERS; OFFERCHANNEL messages until ALLOFFERS_DELIVERED; the heartbeat and shutdown
#    offers are found by interface GUID (their relid and connection id kept);
#  * one GPADL per channel over both of its rings: the heartbeat's 2 x 2 pages fit the
#    GPADL_HEADER, the shutdown's 2 x 16 pages need a GPADL_BODY for the PFNs past 26;
#    GPADL_CREATED must name the handle with status 0;
#  * OPENCHANNEL (downstream ring at the GPADL's half) and OPENCHANNEL_RESULT status 0;
#  * then it serves both rings: each host packet (descriptor, 8-byte aligned, trailer with the
#    previous write index, wrap-around) is copied out, answered in place as Linux does
#    (icflags TRANSACTION|RESPONSE, same transaction id, in-band), and the host is signalled
#    (HvSignalEvent on the channel's connection) when its ring was empty before the answer:
#    NEGOTIATE picks framework 3.0 or 1.0 and the newest service version the guest knows of
#    those offered; HEARTBEAT answers seq_num + 1; SHUTDOWN answers S_OK for shutdown or
#    restart (E_FAIL otherwise) and ends the run.
# The host (the ic-shutdown need) asks for a shutdown after 3 answered heartbeats.
# Serial output:  synic ok
#                 vmbus version 00050003 after 00000001 refused
#                 offers ok
#                 channels open
#                 heartbeats answered: 00000003
#                 shutdown flags: 00000000
#                 PASS
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"
.include "gdt.inc"
.include "hv_lm.inc"

.set APIC, 0xFEE00000
.set SIMP, 0x22000
.set SIEFP, 0x23000
.set MONITOR1, 0x24000         # monitor pages handed to INITIATE_CONTACT (unused here)
.set MONITOR2, 0x25000
.set HB_RING, 0x30000          # heartbeat: 2 + 2 pages
.set SD_RING, 0x40000          # shutdown: 16 + 16 pages
.set RINGS_END, 0x60000        # (end of the shutdown rings)
.set PKTBUF, 0x70000           # one packet copied out of a ring (at most 4000h bytes)
.set PKTBUF_SIZE, 0x4000
.set MSGBUF, 0x0A00            # the last channel message's payload (240 bytes)
.set POSTBUF, 0x21010          # HV_IN + 10h: the payload of the next PostMessage
# Variables at VARS (addressed through R15).
.set N52, 0x00
.set VERSION, 0x08
.set MSGCONN, 0x0C
.set REFUSED, 0x10
.set BEATS, 0x18
.set SHUT_DONE, 0x1C
.set SHUT_FLAGS, 0x20
.set NEG_FAIL, 0x24
.set HB_CH, 0x40
.set SD_CH, 0x80
# A channel descriptor (HB_CH, SD_CH; addressed through R14).
.set CH_RELID, 0x00
.set CH_CONN, 0x04
.set CH_OUT, 0x08              # guest -> host ring (the GPADL's first half)
.set CH_IN, 0x10               # host -> guest ring
.set CH_SIZE, 0x18             # bytes of data pages per ring
.set CH_PAGES, 0x1C            # pages per ring, header included
.set CH_GPADL, 0x20
.set CH_PREFS, 0x28            # the guest's service versions, newest first, 0-terminated
.set CH_FOUND, 0x30

main:
    hv_lm_start lm

.code64
long_entry:                    # data segments 10h, RSP 7C00h (hv64.inc)
    cld
    movq $VARS, %r15
    movq %r15, %rdi            # variables and MSGBUF (0600h-0FFFh)
    xorl %eax, %eax
    movl $0x140, %ecx
    rep stosq
    movq $HB_RING, %rdi        # both channels' rings start empty
    movl $0x6000, %ecx         # (RINGS_END - HB_RING) / 8
    rep stosq
    leaq HB_CH(%r15), %r14     # the two channels' ring layout and version preferences
    movq $HB_RING, %rax
    movl $2, %ecx
    movq $hb_prefs, %rdx
    movl $0xE1E10, %ebx
    call init_channel
    leaq SD_CH(%r15), %r14
    movq $SD_RING, %rax
    movl $0x10, %ecx
    movq $sd_prefs, %rdx
    movl $0xE1E11, %ebx
    call init_channel
    movq $0x52, %rdi
    movq $isr52, %rax
    call set_gate
    lidt idt_ptr
    movq $APIC+0xF0, %rbx      # spurious-vector register: APIC software enable
    movl $0x1FF, (%rbx)
    xorl %edx, %edx
    movl $0x40000083, %ecx     # SIMP
    movl $SIMP+1, %eax
    wrmsr
    movl $0x40000082, %ecx     # SIEFP
    movl $SIEFP+1, %eax
    wrmsr
    movl $0x40000092, %ecx     # SINT2: vector 52h, not masked, no AutoEOI
    movl $0x52, %eax
    wrmsr
    movl $0x40000080, %ecx     # SCONTROL: enable
    movl $1, %eax
    wrmsr
    movq $msg_synic_ok, %rsi
    call puts64
    sti

    call connect
    movq $msg_version, %rsi
    call puts64
    movl VERSION(%r15), %eax
    call hex32_64
    movq $msg_after, %rsi
    call puts64
    movl REFUSED(%r15), %eax
    call hex32_64
    movq $msg_refused, %rsi
    call puts64

    call request_offers
    movq $msg_offers_ok, %rsi
    call puts64
    leaq HB_CH(%r15), %r14
    call create_gpadl
    call open_channel
    leaq SD_CH(%r15), %r14
    call create_gpadl
    call open_channel
    movq $msg_open, %rsi
    call puts64

# ---- serve both rings until the host asks for a shutdown ----
serve:
    cli
    movq $SIEFP+0x200, %rbx    # clear both channels' event flags in SIEF slot 2 first: a
    movl HB_CH+CH_RELID(%r15), %eax    # flag set again after this interrupts again
    lock btrl %eax, (%rbx)
    movl SD_CH+CH_RELID(%r15), %eax
    lock btrl %eax, (%rbx)
    leaq HB_CH(%r15), %r14
    call ring_read
    testl %eax, %eax
    jnz serve_packet
    leaq SD_CH(%r15), %r14
    call ring_read
    testl %eax, %eax
    jnz serve_packet
    sti                        # STI; HLT: no interrupt slips in between
    hlt
    jmp serve
serve_packet:
    sti
    call answer_ic
    cmpl $0, NEG_FAIL(%r15)
    jne fail_negotiate
    cmpl $0, SHUT_DONE(%r15)
    je serve
    movq $msg_beats, %rsi
    call puts64
    movl BEATS(%r15), %eax
    call hex32_64
    call newline64
    movq $msg_flags, %rsi
    call puts64
    movl SHUT_FLAGS(%r15), %eax
    call hex32_64
    call newline64
    cmpl $0, BEATS(%r15)
    je fail_no_beats
    call pass64

# init_channel: descriptor R14 for rings at RAX, ECX pages each, preferences RDX, GPADL EBX.
init_channel:
    movq %rax, CH_OUT(%r14)
    movl %ecx, CH_PAGES(%r14)
    shll $0xC, %ecx
    addq %rcx, %rax
    movq %rax, CH_IN(%r14)
    subl $0x1000, %ecx
    movl %ecx, CH_SIZE(%r14)
    movq %rdx, CH_PREFS(%r14)
    movl %ebx, CH_GPADL(%r14)
    ret

# ---- the channel protocol ----
# connect: INITIATE_CONTACT with each version in turn until one is accepted.
connect:
    movq $versions, %r12
connect_next:
    movl (%r12), %eax
    testl %eax, %eax
    jz fail_noversion
    movq $POSTBUF, %rdi
    movl $0xE, (%rdi)          # CHANNELMSG_INITIATE_CONTACT
    movl $0, 4(%rdi)
    movl %eax, 8(%rdi)         # vmbus_version_requested
    movl $0, 0xC(%rdi)         # target_vcpu 0
    movq $0, 0x10(%rdi)        # interrupt_page (< 5.0; unused from WIN8 on)
    movl $1, %ecx              # VMBUS_MESSAGE_CONNECTION_ID
    cmpl $0x50000, %eax
    jb connect_old
    movq $2, 0x10(%rdi)        # msg_sint 2, msg_vtl 0, feature_flags 0
    movl $4, %ecx              # VMBUS_MESSAGE_CONNECTION_ID_4
connect_old:
    movq $MONITOR1, %rdx
    movq %rdx, 0x18(%rdi)
    movq $MONITOR2, %rdx
    movq %rdx, 0x20(%rdi)
    movl $0x28, %edx
    call post_message
    cmpq $0x12, %rax           # HV_STATUS_INVALID_CONNECTION_ID: no connection 4
    je connect_refused
    testq %rax, %rax
    jnz fail_post
    call wait_message
    cmpl $0xF, %eax            # CHANNELMSG_VERSION_RESPONSE
    jne fail_unexpected
    movq $MSGBUF, %rsi
    cmpb $0, 8(%rsi)           # version_supported
    je connect_refused
    movl (%r12), %eax
    movl %eax, VERSION(%r15)
    movl $1, MSGCONN(%r15)
    cmpl $0x50000, %eax
    jb connect_done
    movl 0xC(%rsi), %eax       # msg_conn_id
    movl %eax, MSGCONN(%r15)
connect_done:
    ret
connect_refused:
    incl REFUSED(%r15)
    addq $4, %r12
    jmp connect_next

# request_offers: REQUESTOFFERS, then take offers until ALLOFFERS_DELIVERED.
request_offers:
    movq $POSTBUF, %rdi
    movl $3, (%rdi)            # CHANNELMSG_REQUESTOFFERS
    movl $0, 4(%rdi)
    movl MSGCONN(%r15), %ecx
    movl $8, %edx
    call post_message
    testq %rax, %rax
    jnz fail_post
offers_loop:
    call wait_message
    cmpl $4, %eax              # CHANNELMSG_ALLOFFERS_DELIVERED
    je offers_done
    cmpl $1, %eax              # CHANNELMSG_OFFERCHANNEL
    jne fail_unexpected
    movq $guid_heartbeat, %rdi
    leaq HB_CH(%r15), %r14
    call take_offer
    movq $guid_shutdown, %rdi
    leaq SD_CH(%r15), %r14
    call take_offer
    jmp offers_loop
offers_done:
    cmpl $0, HB_CH+CH_FOUND(%r15)
    je fail_no_offer
    cmpl $0, SD_CH+CH_FOUND(%r15)
    je fail_no_offer
    ret

# take_offer: if the offer in MSGBUF has interface type RDI, keep its relid and connection id
# in channel R14.
take_offer:
    movq $MSGBUF+8, %rsi       # if_type
    movl $0x10, %ecx
    repe cmpsb
    jne take_offer_done
    movq $MSGBUF, %rsi
    movl 0xB8(%rsi), %eax      # child_relid
    movl %eax, CH_RELID(%r14)
    movl 0xC0(%rsi), %eax      # connection_id
    movl %eax, CH_CONN(%r14)
    movl $1, CH_FOUND(%r14)
take_offer_done:
    ret

# create_gpadl: one range over both rings of channel R14 (GPADL_HEADER with up to 26 PFNs,
# GPADL_BODY messages with up to 28 more each), then GPADL_CREATED.
create_gpadl:
    movq $POSTBUF, %rdi
    movl $8, (%rdi)            # CHANNELMSG_GPADL_HEADER
    movl $0, 4(%rdi)
    movl CH_RELID(%r14), %eax
    movl %eax, 8(%rdi)
    movl CH_GPADL(%r14), %eax
    movl %eax, 0xC(%rdi)
    movl CH_PAGES(%r14), %r13d
    shll $1, %r13d             # R13 = PFNs left to send
    leal 8(,%r13,8), %eax
    movw %ax, 0x10(%rdi)       # range_buflen: the gpa_range and its PFNs
    movw $1, 0x12(%rdi)        # rangecount
    movl %r13d, %eax
    shll $0xC, %eax
    movl %eax, 0x14(%rdi)      # byte_count
    movl $0, 0x18(%rdi)        # byte_offset
    movq CH_OUT(%r14), %rbx
    shrq $0xC, %rbx            # RBX = next PFN
    leaq 0x1C(%rdi), %rdi
    movl $0x1A, %ecx           # 26 PFNs fit the header
    call put_pfns
    movl $0x1C, %edx
    shll $3, %ecx
    addl %ecx, %edx
    movl MSGCONN(%r15), %ecx
    call post_message
    testq %rax, %rax
    jnz fail_post
gpadl_bodies:
    testl %r13d, %r13d
    jz gpadl_wait
    movq $POSTBUF, %rdi
    movl $9, (%rdi)            # CHANNELMSG_GPADL_BODY
    movl $0, 4(%rdi)
    movl $0, 8(%rdi)           # msgnumber
    movl CH_GPADL(%r14), %eax
    movl %eax, 0xC(%rdi)
    leaq 0x10(%rdi), %rdi
    movl $0x1C, %ecx           # 28 PFNs per body
    call put_pfns
    movl $0x10, %edx
    shll $3, %ecx
    addl %ecx, %edx
    movl MSGCONN(%r15), %ecx
    call post_message
    testq %rax, %rax
    jnz fail_post
    jmp gpadl_bodies
gpadl_wait:
    call wait_message
    cmpl $0xA, %eax            # CHANNELMSG_GPADL_CREATED
    jne fail_unexpected
    movq $MSGBUF, %rsi
    movl CH_GPADL(%r14), %eax
    cmpl %eax, 0xC(%rsi)
    jne fail_gpadl
    cmpl $0, 0x10(%rsi)        # creation_status
    jne fail_gpadl
    ret

# put_pfns: write min(ECX, R13) consecutive PFNs from RBX at RDI; ECX = how many, R13 -= that.
put_pfns:
    cmpl %r13d, %ecx
    jbe put_pfns_n
    movl %r13d, %ecx
put_pfns_n:
    subl %ecx, %r13d
    pushq %rcx
put_pfns_loop:
    movq %rbx, (%rdi)
    incq %rbx
    addq $8, %rdi
    decl %ecx
    jnz put_pfns_loop
    popq %rcx
    ret

# open_channel: OPENCHANNEL on channel R14 with its GPADL, then OPENCHANNEL_RESULT.
open_channel:
    movq $POSTBUF, %rdi
    xorl %eax, %eax
    movl $0x14, %ecx           # 160 bytes of zeros (user data included)
    rep stosq
    movq $POSTBUF, %rdi
    movl $5, (%rdi)            # CHANNELMSG_OPENCHANNEL
    movl CH_RELID(%r14), %eax
    movl %eax, 8(%rdi)         # child_relid
    movl %eax, 0xC(%rdi)       # openid
    movl CH_GPADL(%r14), %eax
    movl %eax, 0x10(%rdi)      # ringbuffer_gpadlhandle
    movl $0, 0x14(%rdi)        # target_vp
    movl CH_PAGES(%r14), %eax
    movl %eax, 0x18(%rdi)      # downstream_ringbuffer_pageoffset
    movl MSGCONN(%r15), %ecx
    movl $0x94, %edx
    call post_message
    testq %rax, %rax
    jnz fail_post
    call wait_message
    cmpl $6, %eax              # CHANNELMSG_OPENCHANNEL_RESULT
    jne fail_unexpected
    movq $MSGBUF, %rsi
    movl CH_RELID(%r14), %eax
    cmpl %eax, 8(%rsi)
    jne fail_open
    cmpl $0, 0x10(%rsi)        # status
    jne fail_open
    ret

# ---- SynIC messages and hypercalls ----
# post_message: HvCallPostMessage of the EDX-byte payload at POSTBUF to connection ECX,
# message type 1 (VMBus) -> RAX status.
post_message:
    movq $HV_IN, %rdi
    movl %ecx, (%rdi)
    movl $0, 4(%rdi)
    movl $1, 8(%rdi)
    movl %edx, 0xC(%rdi)
    movq $0x5C, %rcx
    movq %rdi, %rdx
    xorl %r8d, %r8d
    movq $HV_HCPAGE, %rax
    call *%rax
    ret

# signal_host: fast HvCallSignalEvent on channel R14's connection, flag 0 -> RAX status.
signal_host:
    movl CH_CONN(%r14), %edx
    movq $0x1005D, %rcx
    xorl %r8d, %r8d
    movq $HV_HCPAGE, %rax
    call *%rax
    ret

# wait_message: halt until SIM slot 2 holds a message, copy its payload to MSGBUF, free the
# slot (EOM when MessagePending is set, as Linux's vmbus_signal_eom) -> EAX its msgtype.
wait_message:
    pushq %rbx
    movq $SIMP+0x200, %rbx
wait_message_loop:
    cli
    cmpl $0, (%rbx)
    jne wait_message_take
    sti
    hlt
    jmp wait_message_loop
wait_message_take:
    sti
    movzbl 4(%rbx), %ecx       # payload size
    leaq 0x10(%rbx), %rsi
    movq $MSGBUF, %rdi
    rep movsb
    movb 5(%rbx), %al          # message flags
    movl $0, (%rbx)            # HvMessageTypeNone: the slot is free
    testb $1, %al
    jz wait_message_done
    movl $0x40000084, %ecx     # EOM: the next queued message comes in
    xorl %eax, %eax
    xorl %edx, %edx
    wrmsr
wait_message_done:
    movq $MSGBUF, %rsi
    movl (%rsi), %eax
    popq %rbx
    ret

# ---- rings ----
# ring_read: the next packet of channel R14's inbound ring into PKTBUF -> EAX 1, or 0 if the
# ring is empty.  Signals the host if it waits for room (pending_send_sz).
ring_read:
    movq CH_IN(%r14), %rbx
    movl 4(%rbx), %esi         # read_index
    cmpl (%rbx), %esi          # write_index
    jne ring_read_some
    xorl %eax, %eax
    ret
ring_read_some:
    movl $0x10, %ecx           # the descriptor first, for its length
    pushq %rsi
    call ring_copy_out
    popq %rsi
    movq $PKTBUF, %rdi
    movzwl 4(%rdi), %ecx       # len8
    shll $3, %ecx
    cmpl $0x10, %ecx
    jb fail_ring
    cmpl $PKTBUF_SIZE-8, %ecx
    ja fail_ring
    pushq %rcx
    call ring_copy_out         # the whole packet (ESI ends past it)
    popq %rcx
    addl $8, %esi              # and the trailer
    cmpl CH_SIZE(%r14), %esi
    jb ring_read_index
    subl CH_SIZE(%r14), %esi
ring_read_index:
    movl %esi, 4(%rbx)
    cmpl $0, 0xC(%rbx)         # pending_send_sz: the host waits for room
    je ring_read_done
    call signal_host
ring_read_done:
    movl $1, %eax
    ret

# ring_copy_out: ECX bytes of ring RBX's data from offset ESI (wrapping) to PKTBUF; ESI ends
# at the offset after them.
ring_copy_out:
    movq $PKTBUF, %rdi
    movl CH_SIZE(%r14), %edx
ring_copy_out_loop:
    testl %ecx, %ecx
    jz ring_copy_out_done
    movb 0x1000(%rbx,%rsi), %al
    movb %al, (%rdi)
    incq %rdi
    incl %esi
    cmpl %edx, %esi
    jb ring_copy_out_next
    xorl %esi, %esi
ring_copy_out_next:
    decl %ecx
    jmp ring_copy_out_loop
ring_copy_out_done:
    ret

# ring_write: the ECX-byte packet at PKTBUF and its trailer (the start offset in the high
# dword) into channel R14's outbound ring; signals the host if the ring was empty and its
# interrupt_mask is 0 (Linux hv_signal_on_write).
ring_write:
    movq CH_OUT(%r14), %rbx
    movl (%rbx), %esi          # write_index
    movl 4(%rbx), %eax         # read_index
    subl %esi, %eax            # free = (read - write) mod size, or size when empty
    jnz ring_write_free
    movl CH_SIZE(%r14), %eax
ring_write_free:
    jae ring_write_pos
    addl CH_SIZE(%r14), %eax
ring_write_pos:
    leal 8(%rcx), %edx
    cmpl %edx, %eax            # strictly more room than packet + trailer
    jbe fail_ring_full
    movq $PKTBUF, %rdi
    movl $0, (%rdi,%rcx)       # the trailer
    movl %esi, 4(%rdi,%rcx)
    movl %esi, %r9d            # the old write index
    movl %edx, %ecx
    movq $PKTBUF, %rdi
    movl CH_SIZE(%r14), %edx
ring_write_loop:
    movb (%rdi), %al
    movb %al, 0x1000(%rbx,%rsi)
    incq %rdi
    incl %esi
    cmpl %edx, %esi
    jb ring_write_next
    xorl %esi, %esi
ring_write_next:
    decl %ecx
    jnz ring_write_loop
    movl %esi, (%rbx)          # publish write_index
    cmpl 4(%rbx), %r9d         # was it empty before?
    jne ring_write_done
    cmpl $0, 8(%rbx)           # the host's interrupt_mask
    jne ring_write_done
    call signal_host
ring_write_done:
    ret

# ---- integration components ----
# answer_ic: answer the IC message in PKTBUF in place and send it back on channel R14.
answer_ic:
    movq $PKTBUF, %rdi
    movzwl 2(%rdi), %ebp       # offset8
    shll $3, %ebp
    addq %rdi, %rbp            # RBP = the payload: pipe header, ICMSG header, body
    movzwl 0xC(%rbp), %eax     # icmsgtype
    testl %eax, %eax
    jz answer_negotiate
    cmpl $1, %eax
    je answer_heartbeat
    cmpl $3, %eax
    je answer_shutdown
    movl $0x80004005, 0x14(%rbp)   # E_FAIL: not a service this guest knows
    jmp answer_send
answer_heartbeat:
    incq 0x1C(%rbp)            # seq_num + 1
    incl BEATS(%r15)
    jmp answer_send
answer_shutdown:
    movl 0x24(%rbp), %eax      # flags: 0/1 shutdown, 2/3 restart, else E_FAIL
    movl %eax, SHUT_FLAGS(%r15)
    movl $0, 0x14(%rbp)
    cmpl $3, %eax
    jbe answer_shutdown_ok
    movl $0x80004005, 0x14(%rbp)
answer_shutdown_ok:
    movl $1, SHUT_DONE(%r15)
    jmp answer_send
answer_negotiate:
    movzwl 0x1C(%rbp), %ecx    # icframe_vercnt
    movzwl 0x1E(%rbp), %edx    # icmsg_vercnt
    movl %ecx, %eax
    addl %edx, %eax
    cmpl $0x20, %eax           # more versions than a message this size holds: refuse
    ja negotiate_none
    leaq 0x24(%rbp), %rsi      # the framework versions
    movq $fw_prefs, %r10
    call pick_version
    testl %eax, %eax
    jz negotiate_none
    movl %eax, %r11d
    leaq 0x24(%rbp,%rcx,4), %rsi   # the service versions
    movl %edx, %ecx
    movq CH_PREFS(%r14), %r10
    call pick_version
    testl %eax, %eax
    jz negotiate_none
    movw $1, 0x1C(%rbp)
    movw $1, 0x1E(%rbp)
    movl %r11d, 0x24(%rbp)
    movl %eax, 0x28(%rbp)
    jmp answer_send
negotiate_none:
    movl $0, 0x1C(%rbp)        # both counts 0: nothing in common
    movl $1, NEG_FAIL(%r15)
answer_send:
    movb $5, 0x19(%rbp)        # icflags: TRANSACTION | RESPONSE
    movq $PKTBUF, %rdi
    movw $6, (%rdi)            # VM_PKT_DATA_INBAND, no completion requested
    movw $0, 6(%rdi)
    movzwl 4(%rdi), %ecx       # the same length and transaction id
    shll $3, %ecx
    jmp ring_write

# pick_version: the first of the 0-terminated preference list R10 that is among the ECX
# versions at RSI -> EAX (0 if none).  Keeps ECX, EDX, RSI.
pick_version:
    movl (%r10), %eax
    testl %eax, %eax
    jz pick_version_done
    xorl %r9d, %r9d
pick_version_scan:
    cmpl %ecx, %r9d
    jae pick_version_next
    cmpl %eax, (%rsi,%r9,4)
    je pick_version_done
    incl %r9d
    jmp pick_version_scan
pick_version_next:
    addq $4, %r10
    jmp pick_version
pick_version_done:
    ret

# hex32_64: write EAX as eight hex digits.
hex32_64:
    pushq %rax
    pushq %rcx
    movl $4, %ecx
hex32_64_loop:
    roll $8, %eax
    call hex8_64
    decl %ecx
    jnz hex32_64_loop
    popq %rcx
    popq %rax
    ret

isr52:
    incl N52(%r15)
    pushq %rbx
    movq $APIC+0xB0, %rbx      # EOI
    movl $0, (%rbx)
    popq %rbx
    iretq

fail_noversion:
    movq $msg_noversion, %rsi
    call fail64
fail_post:
    movq $msg_post, %rsi
    call fail64
fail_unexpected:
    movq $msg_unexpected, %rsi
    call fail64
fail_no_offer:
    movq $msg_no_offer, %rsi
    call fail64
fail_gpadl:
    movq $msg_gpadl, %rsi
    call fail64
fail_open:
    movq $msg_open_fail, %rsi
    call fail64
fail_ring:
    movq $msg_ring, %rsi
    call fail64
fail_ring_full:
    movq $msg_ring_full, %rsi
    call fail64
fail_negotiate:
    movq $msg_negotiate, %rsi
    call fail64
fail_no_beats:
    movq $msg_no_beats, %rsi
    call fail64

.p2align 2, 0
# INITIATE_CONTACT versions, newest first: COPPER (6.0), WIN10_V5_3 ... WIN8.
versions:
    .long 0x60000, 0x50003, 0x50002, 0x50001, 0x50000, 0x40001, 0x40000, 0x30000, 0x20004, 0
# IC versions as {u16 major, u16 minor}, the guest's preference order (Linux hv_utils).
fw_prefs:
    .long 0x00000003, 0x00000001, 0
hb_prefs:
    .long 0x00000003, 0x00000001, 0
sd_prefs:
    .long 0x00020003, 0x00010003, 0x00000003, 0x00000001, 0
# Interface GUIDs in their wire (mixed-endian) form.
guid_heartbeat:                # 57164f39-9115-4e78-ab55-382f3bd5422d
    .byte 0x39, 0x4F, 0x16, 0x57, 0x15, 0x91, 0x78, 0x4E
    .byte 0xAB, 0x55, 0x38, 0x2F, 0x3B, 0xD5, 0x42, 0x2D
guid_shutdown:                 # 0e0b6031-5213-4934-818b-38d90ced39db
    .byte 0x31, 0x60, 0x0B, 0x0E, 0x13, 0x52, 0x34, 0x49
    .byte 0x81, 0x8B, 0x38, 0xD9, 0x0C, 0xED, 0x39, 0xDB

.p2align 3, 0
idt_ptr:
    .word 0x0FFF
    .quad IDT

msg_synic_ok:
    .asciz "synic ok\r\n"
msg_version:
    .asciz "vmbus version "
msg_after:
    .asciz " after "
msg_refused:
    .asciz " refused\r\n"
msg_offers_ok:
    .asciz "offers ok\r\n"
msg_open:
    .asciz "channels open\r\n"
msg_beats:
    .asciz "heartbeats answered: "
msg_flags:
    .asciz "shutdown flags: "
msg_noversion:
    .asciz "the host accepts none of the VMBus versions"
msg_post:
    .asciz "HvCallPostMessage failed"
msg_unexpected:
    .asciz "unexpected channel message"
msg_no_offer:
    .asciz "no heartbeat or shutdown offer"
msg_gpadl:
    .asciz "GPADL_CREATED: wrong handle or failure status"
msg_open_fail:
    .asciz "OPENCHANNEL_RESULT: wrong relid or failure status"
msg_ring:
    .asciz "host packet with a bad length"
msg_ring_full:
    .asciz "no room in the ring for the answer"
msg_negotiate:
    .asciz "IC version negotiation: no common version"
msg_no_beats:
    .asciz "shutdown before any heartbeat"

.include "hv.inc"
.include "hv64.inc"
.include "lib64.inc"
