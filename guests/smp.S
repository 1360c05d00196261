# syntax: att
# guest: starts every AP with INIT-SIPI-SIPI, counts them with lock xadd, checks their APIC IDs against the MP table and sends fixed/NMI IPIs between the CPUs
#
# Runs with any -smp N (1 to 8).  In "unreal" mode (apic.inc) the BSP:
# * finds the MP floating pointer in F0000h-FFFFFh and counts the enabled processor entries of
#   the MP configuration table (N) and their APIC IDs (a bit mask);
# * writes a far jump to ap_entry at 1000h (the STARTUP vector 01h: APs start at 0100:0000 in
#   real mode) and sends, to all excluding self: INIT (assert), INIT level de-assert (ignored),
#   STARTUP 01h, and once the APs have checked in a second STARTUP 01h, which must be ignored by
#   the now running APs (the check-in count must stay N-1);
# * each AP: takes a stack by its CPUID.1 EBX[31:24] initial APIC ID, compares it with its local
#   APIC's ID register, sets its bit in a shared mask (lock bts), software-enables its APIC with
#   a flat-model logical ID of 1 << APIC ID, counts itself in with lock xadd and waits in HLT;
# * then fixed IPIs with vector 60h: physical to each AP by APIC ID, logical (flat) to the mask
#   of the APs, and with the all-excluding-self shorthand; every AP answers each with a fixed
#   IPI 70h + its APIC ID to APIC ID 0 (one vector per AP: the BSP's handler finds which in its
#   ISR); a self IPI 62h (shorthand self); an NMI to all excluding self;
# * then 8 handshake rounds with AP 1 (started by IPI 63h) in which both spin on a shared word
#   with PAUSE (with several VPs each PAUSE hands the turn to the other VP).
# Serial output:  smp: mp table cpus 0004 apic ids 000F
#                 smp: checked in 0003 apic ids 000E
#                 ipi: requests 0009 replies 0009 self 0001 nmi 0003 handshakes 0008
#                 PASS
# (the numbers for -smp 4: N-1 APs, 3*(N-1) requests and replies).
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"
.include "ap_start.inc"

.set AP_STACKS, 0x7000         # AP with APIC ID n: stack top 7000h - n*100h
.set NCPU, VARS                # word: processors in the MP table
.set MPMASK, VARS+2            # word: their APIC IDs as a bit mask
.set CHECKIN, VARS+4           # word: APs counted in (lock xadd)
.set ARRIVED, VARS+6           # word: APIC IDs of the APs that checked in
.set BADID, VARS+8             # word: APs whose APIC ID register differs from CPUID's
.set REQS, VARS+0xA            # word: IPI 60h taken by APs
.set REPLIES, VARS+0xC         # word: IPI 61h taken by the BSP
.set SELF, VARS+0xE            # word: IPI 62h taken by the BSP
.set NMIS, VARS+0x10           # word: NMIs taken by APs
.set REPLYMASK, VARS+0x12      # word: APIC IDs of the APs whose reply came in this round
.set PING, VARS+0x14           # word: the BSP's handshake round
.set PONG, VARS+0x16           # word: AP 1's answer

main:
    cli
    call unreal
    xorw %ax, %ax
    movw $NCPU, %di
    movw $0x18, %cx              # clear the variables (12 words)
    rep stosb
    movb $0xFF, %al              # mask both 8259s: only APIC interrupts here
    outb %al, $0x21
    outb %al, $0xA1
    movw $ipi_request, (0x60*4)
    movw $0, (0x60*4+2)
    movw $0x70*4, %di            # vectors 70h-77h: the APs' replies
set_reply:
    movw $ipi_reply, (%di)
    movw $0, 2(%di)
    addw $4, %di
    cmpw $0x78*4, %di
    jb set_reply
    movw $ipi_self, (0x62*4)
    movw $0, (0x62*4+2)
    movw $pong, (0x63*4)
    movw $0, (0x63*4+2)
    movw $nmi_handler, (2*4)
    movw $0, (2*4+2)
    movl $APIC, %ebx
    apic_sw_enable ebx
    movl $0x01000000, %fs:0xD0(%ebx)  # LDR: logical ID bit 0 (flat model: DFR FFFFFFFFh)

    # ---- the MP table: how many processors, which APIC IDs ------------------------------------
    movl $0xF0000, %esi
find_mp:
    cmpl $0x5F504D5F, %fs:(%esi)    # "_MP_"
    je mp_found
    addl $0x10, %esi
    cmpl $0x100000, %esi
    jb find_mp
    movw $f_no_mp, %si
    jmp fail
mp_found:
    movl %fs:4(%esi), %esi       # the configuration table
    cmpl $0x504D4350, %fs:(%esi)    # "PCMP"
    jne fail_pcmp
    movzwl %fs:0x22(%esi), %ecx  # entry count
    addl $0x2C, %esi
mp_loop:
    movb %fs:(%esi), %al
    testb %al, %al
    jnz mp_other
    testb $1, %fs:3(%esi)        # CPU flags: enabled
    jz mp_next20
    incw (NCPU)
    movzbw %fs:1(%esi), %ax      # local APIC ID
    btsw %ax, (MPMASK)
mp_next20:
    addl $0xC, %esi              # processor entries are 20 bytes
mp_other:
    addl $8, %esi
    decl %ecx
    jnz mp_loop
    movw $msg_mp, %si
    call puts
    movw (NCPU), %ax
    call hex16
    movw $msg_ids, %si
    call puts
    movw (MPMASK), %ax
    call hex16
    call newline

    # ---- INIT, INIT de-assert, STARTUP, STARTUP to all excluding self ----------------------------
    sipi_trampoline ap_entry
    movl $APIC, %ebx
    movl $0, %fs:ICR_HI(%ebx)
    movl $0x000C4500, %fs:ICR_LO(%ebx)   # all-but-self, level assert, INIT
    movl $0x000C8500, %fs:ICR_LO(%ebx)   # all-but-self, level trigger, de-assert, INIT
    movl $0x000C4600+SIPI_VECTOR, %fs:ICR_LO(%ebx)   # STARTUP 01h
    movw (NCPU), %dx
    decw %dx                     # APs expected
    movw $CHECKIN, %di
    call wait_count
    jc fail_checkin
    movl $0x000C4600+SIPI_VECTOR, %fs:ICR_LO(%ebx)   # second STARTUP: APs are running
    movl $0x40000, %ecx          # let them run a while: none may check in again
settle:
    pause
    decl %ecx
    jnz settle
    cmpw (CHECKIN), %dx
    jne fail_twice
    movw $msg_in, %si
    call puts
    movw (CHECKIN), %ax
    call hex16
    movw $msg_ids, %si
    call puts
    movw (ARRIVED), %ax
    call hex16
    call newline
    movw (MPMASK), %ax
    andw $0xFFFE, %ax            # every AP of the table, not the BSP (APIC ID 0)
    cmpw (ARRIVED), %ax
    jne fail_ids
    cmpw $0, (BADID)
    jne fail_badid

    # ---- IPIs between the CPUs -----------------------------------------------------------------
    sti
    movw (MPMASK), %bp
    andw $0xFFFE, %bp            # the APs' APIC IDs
    xorw %cx, %cx                # physical: one IPI per AP, by APIC ID
phys_loop:
    btw %cx, %bp
    jnc phys_next
    movzwl %cx, %eax
    shll $0x18, %eax
    movl %eax, %fs:ICR_HI(%ebx)
    movl $0x00004060, %fs:ICR_LO(%ebx)
phys_next:
    incw %cx
    cmpw $8, %cx
    jb phys_loop
    movw $f_phys, %si
    call wait_replies
    movzwl %bp, %eax             # logical, flat model: the mask of the APs
    shll $0x18, %eax
    movl %eax, %fs:ICR_HI(%ebx)
    movl $0x00004860, %fs:ICR_LO(%ebx)
    movw $f_logical, %si
    call wait_replies
    movl $0x000C4060, %fs:ICR_LO(%ebx)   # all excluding self
    movw $f_allbut, %si
    call wait_replies
    movl $0x00044062, %fs:ICR_LO(%ebx)   # self
    movw $SELF, %di
    movw $1, %dx
    call wait_count
    jc fail_self
    movl $0x000C4400, %fs:ICR_LO(%ebx)   # NMI to all excluding self
    movw $NMIS, %di
    movw (NCPU), %dx
    decw %dx
    call wait_count
    jc fail_nmi
    movw (REQS), %ax
    cmpw (REPLIES), %ax
    jne fail_reqs
    # A handshake with AP 1 where both spin with PAUSE: 8 rounds of PING then PONG.
    cmpw $1, (NCPU)
    je no_pingpong
    movl $0x01000000, %fs:ICR_HI(%ebx)
    movl $0x00004063, %fs:ICR_LO(%ebx)   # AP 1 enters its answering loop
    movw $1, %ax
ping_loop:
    movw %ax, (PING)
    movw %ax, %dx
    movw $PONG, %di
    call wait_count
    jc fail_pingpong
    incw %ax
    cmpw $9, %ax
    jb ping_loop
no_pingpong:
    movw $msg_ipi, %si
    call puts
    movw (REQS), %ax
    call hex16
    movw $msg_replies, %si
    call puts
    movw (REPLIES), %ax
    call hex16
    movw $msg_self, %si
    call puts
    movw (SELF), %ax
    call hex16
    movw $msg_nmi, %si
    call puts
    movw (NMIS), %ax
    call hex16
    movw $msg_pong, %si
    call puts
    movw (PONG), %ax
    call hex16
    call newline
    cli
    jmp pass

# wait_replies: wait (bounded) until every AP (BP: their APIC IDs) has replied, then clear
# REPLYMASK for the next round; FAIL with the reason at SI if one never does.
wait_replies:
    pushw %dx
    pushw %di
    movw %bp, %dx
    movw $REPLYMASK, %di
    call wait_count
    jc fail
    movw $0, (REPLYMASK)
    popw %di
    popw %dx
    ret

# wait_count: wait (bounded) until the word at DI equals DX; CF=1 if it never did.
wait_count:
    pushl %ecx
    movl $0x200000, %ecx
wait_loop:
    cmpw %dx, (%di)
    je wait_done
    pause
    decl %ecx
    jnz wait_loop
    popl %ecx
    stc
    ret
wait_done:
    popl %ecx
    clc
    ret

# ---- the APs --------------------------------------------------------------------------------
ap_entry:
    ap_real_mode
    movl $1, %eax
    cpuid
    shrl $0x18, %ebx             # initial APIC ID
    movw %bx, %si
    movw %bx, %ax
    shlw $8, %ax
    movw $AP_STACKS, %sp
    subw %ax, %sp
    call unreal
    movl $APIC, %ebx
    movl %fs:0x20(%ebx), %eax    # the APIC ID register
    shrl $0x18, %eax
    cmpw %si, %ax
    je ap_id_ok
    lock incw (BADID)
ap_id_ok:
    lock btsw %ax, (ARRIVED)
    apic_sw_enable ebx
    movw %ax, %cx
    movl $1, %eax
    shll %cl, %eax
    shll $0x18, %eax
    movl %eax, %fs:0xD0(%ebx)    # LDR: logical ID 1 << APIC ID
    movw $1, %ax
    lock xaddw %ax, (CHECKIN)
    sti
ap_idle:
    hlt
    jmp ap_idle

# ---- interrupt handlers (real mode, one IVT for every CPU) ---------------------------------
ipi_request:                     # on an AP: count it, answer with IPI 70h+APIC ID to APIC 0
    pushl %eax
    pushl %ebx
    lock incw (REQS)
    movl $APIC, %ebx
    movl %fs:0x20(%ebx), %eax    # APIC ID
    shrl $0x18, %eax
    addl $0x00004070, %eax
    movl $0, %fs:ICR_HI(%ebx)
    movl %eax, %fs:ICR_LO(%ebx)
    movl $0, %fs:0xB0(%ebx)      # EOI
    popl %ebx
    popl %eax
    iret

# ipi_reply: on the BSP, vectors 70h-77h (one per AP: replies from several APs to one vector
# would merge in the IRR).  The vector in service is the highest bit of ISR[7Fh:60h] (APIC
# offset 130h), as IF=0 here; its AP's bit goes into REPLYMASK.
ipi_reply:
    pushl %eax
    pushl %ebx
    movl $APIC, %ebx
    bsrl %fs:0x130(%ebx), %eax
    subw $0x10, %ax              # bit 10h is vector 70h: AP with APIC ID 0
    lock btsw %ax, (REPLYMASK)
    lock incw (REPLIES)
    movl $0, %fs:0xB0(%ebx)      # EOI
    popl %ebx
    popl %eax
    iret

ipi_self:
    lock incw (SELF)
    call apic_eoi
    iret

# pong: on AP 1, vector 63h: answer the BSP's 8 handshake rounds, spinning with PAUSE.
pong:
    pushaw
    call apic_eoi
    movw $1, %dx
    movw $PING, %di
pong_loop:
    call wait_count
    jc pong_done
    movw %dx, (PONG)
    incw %dx
    cmpw $9, %dx
    jb pong_loop
pong_done:
    popaw
    iret

nmi_handler:                     # NMIs need no EOI
    lock incw (NMIS)
    iret

fail_pcmp:
    movw $f_pcmp, %si
    jmp fail
fail_checkin:
    movw $f_checkin, %si
    jmp fail
fail_twice:
    movw $f_twice, %si
    jmp fail
fail_ids:
    movw $f_ids, %si
    jmp fail
fail_badid:
    movw $f_badid, %si
    jmp fail
fail_self:
    movw $f_self, %si
    jmp fail
fail_nmi:
    movw $f_nmi, %si
    jmp fail
fail_reqs:
    movw $f_reqs, %si
    jmp fail
fail_pingpong:
    movw $f_pingpong, %si
    jmp fail

.include "apic.inc"
.include "lib.inc"

msg_mp:      .asciz "smp: mp table cpus "
msg_ids:     .asciz " apic ids "
msg_in:      .asciz "smp: checked in "
msg_ipi:     .asciz "ipi: requests "
msg_replies: .asciz " replies "
msg_self:    .asciz " self "
msg_nmi:     .asciz " nmi "
msg_pong:    .asciz " handshakes "
f_no_mp:     .asciz "no MP floating pointer in F0000h-FFFFFh"
f_pcmp:      .asciz "the MP configuration table has no PCMP signature"
f_checkin:   .asciz "not every AP checked in after INIT-SIPI"
f_twice:     .asciz "an AP checked in again after the second STARTUP"
f_ids:       .asciz "the APs' APIC IDs are not the MP table's"
f_badid:     .asciz "an AP's APIC ID register differs from its CPUID initial APIC ID"
f_phys:      .asciz "physical fixed IPIs not answered"
f_logical:   .asciz "logical fixed IPI not answered"
f_allbut:    .asciz "all-excluding-self fixed IPI not answered"
f_self:      .asciz "self IPI not taken"
f_nmi:       .asciz "NMI IPI not taken by every AP"
f_reqs:      .asciz "IPI requests and replies differ"
f_pingpong:  .asciz "AP 1 did not answer a handshake round"
