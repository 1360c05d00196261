# syntax: att
# guest: finds the ACPI RSDP and the MP floating pointer by the specifications' searches and checks every table's checksum and cross-references
#
# In real mode: reads the INT 15h E820 map.  Then flat 32-bit protected mode (hv32.inc):
# * the RSDP ("RSD PTR ", on a 16-byte boundary in the EBDA's first KiB, then E0000h-FFFFFh:
#   ACPI 6.4, 5.2.5.1) with its 20-byte and extended checksums; the RSDT and every table it
#   points at (signature and checksum); the XSDT, which must list the same tables;
# * the FADT: its DSDT (checksummed, equal to X_DSDT, holding \_S5_), its FACS ("FACS", 64
#   bytes), the PM timer it names (read twice: it must move) and the reset register;
# * the MADT: local APIC address FEE00000h, the enabled local APICs (the first one's APIC ID
#   equal to the LAPIC ID register), the I/O APIC (its version register read through the
#   address given), the interrupt source overrides (IRQ0 on GSI 2), entry lengths adding up;
# * the HPET table: the capabilities register at its base equals the event timer block ID;
# * the MP floating pointer ("_MP_", EBDA first KiB, last KiB of base memory, F0000h-FFFFFh:
#   MP 1.4, 4) and its configuration table ("PCMP", checksum, every entry walked, the entry
#   count and length agreeing, as many processors as the MADT and the same I/O APIC address);
# * the E820 map: the FACS in ACPI NVS, the RSDP and DSDT in reserved (or ACPI) memory, the
#   I/O APIC and HPET pages reserved.
# Serial output:  rsdp: 000FC0C0 rev 02
#                 rsdt: 00000003 tables FACP APIC HPET, xsdt matches
#                 fadt: dsdt 000FC420 facs 000E0000 _S5_ pm timer 00000608 runs, reset 00000CF9=06
#                 madt: 00000001 cpu, ioapic FEC00000 version 00170011, 00000002 overrides
#                 hpet: FED00000 id 8086A201
#                 mp: 000FC0F0 config 000FC100 entries 00000016 cpu 00000001 ioapic 00000001
#                 e820: facs nvs, tables reserved, ioapic and hpet reserved
#                 PASS
# (addresses as this machine places them).  Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"
.include "gdt.inc"

.set IDT, 0x4000               # hv32.inc's set_gate needs it; no interrupts are used
.set E820_BUF, SCRATCH         # E820 entries, 20 bytes each
.set E820_N, VARS              # dword
.set RSDP, VARS+0x04
.set RSDT, VARS+0x08
.set FADT, VARS+0x0C
.set MADT, VARS+0x10
.set HPET, VARS+0x14
.set DSDT, VARS+0x18
.set MPFP, VARS+0x1C
.set NCPU, VARS+0x20
.set IOAPIC, VARS+0x24
.set NTAB, VARS+0x28
.set NISO, VARS+0x2C
.set MPCOUNT, VARS+0x40        # 5 dwords: MP entries of each type

.set SIG_RSD, 0x20445352
.set SIG_PTR, 0x20525450
.set SIG_MP, 0x5F504D5F
.set SIG_PCMP, 0x504D4350
.set SIG_RSDT, 0x54445352
.set SIG_XSDT, 0x54445358
.set SIG_FACP, 0x50434146
.set SIG_APIC, 0x43495041
.set SIG_HPET, 0x54455048
.set SIG_DSDT, 0x54445344
.set SIG_FACS, 0x53434146
.set SIG_S5, 0x5F35535F

main:
    cli
    movl $0, (E820_N)
    xorl %ebx, %ebx
    movw $E820_BUF, %di
e820_loop:
    movl $0xE820, %eax
    movl $0x14, %ecx
    movl $0x534D4150, %edx
    int $0x15
    jc e820_done
    cmpl $0x534D4150, %eax
    jne e820_done
    incl (E820_N)
    addw $0x14, %di
    testl %ebx, %ebx
    jnz e820_loop
e820_done:
    cli
    lgdt gdt_ptr
    jmp hv_enter_protected_mode

gdt_head GDT_CODE32
gdt_tail

.code32
pm_entry:
    # ---- the RSDP ------------------------------------------------------------------------
    movzwl (0x40E), %esi
    shll $4, %esi
    leal 0x400(%esi), %edi
    movl $SIG_RSD, %eax
    movl $SIG_PTR, %ebx
    movl $0x14, %ecx
    call find16
    jnz rsdp_found
    movl $0xE0000, %esi
    movl $0x100000, %edi
    call find16
    jz fail_no_rsdp
rsdp_found:
    movl %esi, (RSDP)
    cmpb $2, 0xF(%esi)
    jb fail_rsdp_rev
    movl 0x14(%esi), %ecx
    call sum8
    jnz fail_rsdp_sum
    movl $msg_rsdp, %esi
    call puts32
    movl (RSDP), %eax
    call hex32_32
    movl $msg_rev, %esi
    call puts32
    movl (RSDP), %esi
    movb 0xF(%esi), %al
    call hex8_32
    call newline32

    # ---- the RSDT and the tables it lists --------------------------------------------------
    movl 0x10(%esi), %esi
    movl $SIG_RSDT, %eax
    call check_table
    movl %esi, (RSDT)
    movl 4(%esi), %ecx
    subl $0x24, %ecx
    shrl $2, %ecx
    jz fail_rsdt_empty
    movl %ecx, (NTAB)
    movl $msg_rsdt, %esi
    call puts32
    movl %ecx, %eax
    call hex32_32
    movl $msg_tables, %esi
    call puts32
    movl (RSDT), %ebx
    addl $0x24, %ebx
rsdt_loop:
    movl (%ebx), %esi
    movl (%esi), %eax
    call check_table
    movb $0x20, %al
    call putc32
    movl (%esi), %eax
    call put_sig
    cmpl $SIG_FACP, %eax
    jne rsdt_not_fadt
    movl %esi, (FADT)
rsdt_not_fadt:
    cmpl $SIG_APIC, %eax
    jne rsdt_not_madt
    movl %esi, (MADT)
rsdt_not_madt:
    cmpl $SIG_HPET, %eax
    jne rsdt_next
    movl %esi, (HPET)
rsdt_next:
    addl $4, %ebx
    loop rsdt_loop

    # The XSDT lists the same tables (64-bit entries).
    movl (RSDP), %esi
    cmpl $0, 0x1C(%esi)
    jne fail_xsdt
    movl 0x18(%esi), %esi
    movl $SIG_XSDT, %eax
    call check_table
    movl 4(%esi), %ecx
    subl $0x24, %ecx
    shrl $3, %ecx
    cmpl (NTAB), %ecx
    jne fail_xsdt
    movl (RSDT), %edi
    addl $0x24, %edi
    addl $0x24, %esi
xsdt_loop:
    movl (%esi), %eax
    cmpl (%edi), %eax
    jne fail_xsdt
    cmpl $0, 4(%esi)
    jne fail_xsdt
    addl $8, %esi
    addl $4, %edi
    loop xsdt_loop
    movl $msg_xsdt, %esi
    call puts32

    # ---- the FADT: DSDT, FACS, PM timer, reset register ------------------------------------
    movl (FADT), %ebx
    testl %ebx, %ebx
    jz fail_no_fadt
    movl 0x28(%ebx), %esi
    movl $SIG_DSDT, %eax
    call check_table
    movl %esi, (DSDT)
    cmpl 0x8C(%ebx), %esi
    jne fail_x_dsdt
    cmpl $0, 0x90(%ebx)
    jne fail_x_dsdt
    movl 4(%esi), %ecx
    subl $3, %ecx
s5_loop:
    cmpl $SIG_S5, (%esi)
    je s5_found
    incl %esi
    loop s5_loop
    jmp fail_no_s5
s5_found:
    movl 0x24(%ebx), %esi
    cmpl $SIG_FACS, (%esi)
    jne fail_facs
    cmpl $0x40, 4(%esi)
    jne fail_facs
    movl $msg_fadt, %esi
    call puts32
    movl (DSDT), %eax
    call hex32_32
    movl $msg_facs, %esi
    call puts32
    movl 0x24(%ebx), %eax
    call hex32_32
    movl $msg_s5, %esi
    call puts32
    movl 0x4C(%ebx), %eax
    call hex32_32
    movl 0x4C(%ebx), %edx
    inl %dx, %eax
    movl %eax, %edi
    movl $0x4000, %ecx
pmt_delay:
    loop pmt_delay
    inl %dx, %eax
    cmpl %edi, %eax
    je fail_pmtmr
    movl $msg_runs, %esi
    call puts32
    movl 0x78(%ebx), %eax
    call hex32_32
    movb $0x3D, %al
    call putc32
    movb 0x80(%ebx), %al
    call hex8_32
    call newline32

    # ---- the MADT ---------------------------------------------------------------------------
    movl (MADT), %ebx
    testl %ebx, %ebx
    jz fail_no_madt
    cmpl $0xFEE00000, 0x24(%ebx)
    jne fail_lapic_addr
    movl $0, (NCPU)
    movl $0, (NISO)
    movl $0, (IOAPIC)
    movl %ebx, %edi
    addl 4(%ebx), %edi           # end of the table
    leal 0x2C(%ebx), %esi
madt_loop:
    cmpl %edi, %esi
    jae madt_done
    movzbl 1(%esi), %ecx
    testl %ecx, %ecx
    jz fail_madt_len
    cmpb $0, (%esi)
    jne madt_not_cpu
    testb $1, 4(%esi)
    jz madt_next
    cmpl $0, (NCPU)
    jne madt_cpu_count
    movl (0xFEE00020), %eax      # the LAPIC ID register: ID in bits 31:24
    shrl $0x18, %eax
    cmpb %al, 3(%esi)
    jne fail_apic_id
madt_cpu_count:
    incl (NCPU)
    jmp madt_next
madt_not_cpu:
    cmpb $1, (%esi)
    jne madt_not_ioapic
    movl 4(%esi), %eax
    movl %eax, (IOAPIC)
    jmp madt_next
madt_not_ioapic:
    cmpb $2, (%esi)
    jne madt_next
    incl (NISO)
    cmpb $0, 3(%esi)
    jne madt_next
    cmpl $2, 4(%esi)             # IRQ0 -> GSI 2
    jne fail_iso
madt_next:
    addl %ecx, %esi
    jmp madt_loop
madt_done:
    cmpl %edi, %esi
    jne fail_madt_len
    cmpl $0, (NCPU)
    je fail_no_cpu
    movl (IOAPIC), %edi
    testl %edi, %edi
    jz fail_no_ioapic
    movl $msg_madt, %esi
    call puts32
    movl (NCPU), %eax
    call hex32_32
    movl $msg_ioapic, %esi
    call puts32
    movl %edi, %eax
    call hex32_32
    movl $msg_version, %esi
    call puts32
    movl $1, (%edi)              # IOREGSEL = version
    movl 0x10(%edi), %eax
    call hex32_32
    movl $msg_overrides, %esi
    call puts32
    movl (NISO), %eax
    call hex32_32
    movl $msg_overrides2, %esi
    call puts32

    # ---- the HPET table ---------------------------------------------------------------------
    movl (HPET), %ebx
    testl %ebx, %ebx
    jz fail_no_hpet
    cmpl $0, 0x30(%ebx)
    jne fail_hpet
    movl 0x2C(%ebx), %edi
    movl (%edi), %eax
    cmpl 0x24(%ebx), %eax
    jne fail_hpet
    movl $msg_hpet, %esi
    call puts32
    movl %edi, %eax
    call hex32_32
    movl $msg_id, %esi
    call puts32
    movl 0x24(%ebx), %eax
    call hex32_32
    call newline32

    # ---- the MP floating pointer and configuration table -----------------------------------
    movl $SIG_MP, %eax
    xorl %ebx, %ebx
    movl $0x10, %ecx
    movzwl (0x40E), %esi
    shll $4, %esi
    leal 0x400(%esi), %edi
    call find16
    jnz mp_found
    movzwl (0x413), %esi         # base memory size in KiB: its last KiB
    shll $0xA, %esi
    subl $0x400, %esi
    leal 0x400(%esi), %edi
    call find16
    jnz mp_found
    movl $0xF0000, %esi
    movl $0x100000, %edi
    call find16
    jz fail_no_mp
mp_found:
    movl %esi, (MPFP)
    movl 4(%esi), %ebx
    cmpl $SIG_PCMP, (%ebx)
    jne fail_pcmp
    movl %ebx, %esi
    movzwl 4(%ebx), %ecx
    call sum8
    jnz fail_pcmp
    movl %ebx, %edi
    movzwl 4(%ebx), %eax
    addl %eax, %edi              # end of the base table
    movzwl 0x22(%ebx), %ecx        # entry count
    leal 0x2C(%ebx), %esi
mp_loop:
    movzbl (%esi), %eax
    cmpl $4, %eax
    ja fail_mp_entry
    incl MPCOUNT(,%eax,4)
    cmpl $2, %eax
    jne mp_not_ioapic
    movl 4(%esi), %edx
    cmpl (IOAPIC), %edx
    jne fail_mp_ioapic
mp_not_ioapic:
    addl $8, %esi
    testl %eax, %eax
    jnz mp_next
    addl $0xC, %esi              # processor entries are 20 bytes
mp_next:
    loop mp_loop
    cmpl %edi, %esi
    jne fail_mp_len
    movl (MPCOUNT), %eax
    cmpl (NCPU), %eax
    jne fail_mp_cpus
    movl $msg_mp, %esi
    call puts32
    movl (MPFP), %eax
    call hex32_32
    movl $msg_config, %esi
    call puts32
    movl %ebx, %eax
    call hex32_32
    movl $msg_entries, %esi
    call puts32
    movzwl 0x22(%ebx), %eax
    call hex32_32
    movl $msg_cpu, %esi
    call puts32
    movl (MPCOUNT), %eax
    call hex32_32
    movl $msg_mp_ioapic, %esi
    call puts32
    movl (MPCOUNT+8), %eax
    call hex32_32
    call newline32

    # ---- the E820 map -----------------------------------------------------------------------
    movl (FADT), %ebx
    movl 0x24(%ebx), %eax          # FACS: ACPI NVS
    call e820_type
    cmpl $4, %edx
    jne fail_e820_facs
    movl (RSDP), %eax            # RSDP: reserved
    call e820_type
    cmpl $2, %edx
    jne fail_e820_tables
    movl (DSDT), %eax            # DSDT: reserved or ACPI reclaimable
    call e820_type
    cmpl $2, %edx
    je e820_dsdt_ok
    cmpl $3, %edx
    jne fail_e820_tables
e820_dsdt_ok:
    movl (IOAPIC), %eax
    call e820_type
    cmpl $2, %edx
    jne fail_e820_mmio
    movl (HPET), %ebx
    movl 0x2C(%ebx), %eax
    call e820_type
    cmpl $2, %edx
    jne fail_e820_mmio
    movl $msg_e820, %esi
    call puts32
    jmp pass32

# find16: the first 16-byte aligned structure in [ESI, EDI) whose first dword is EAX (and
# second EBX, unless EBX is 0) and whose first ECX bytes sum to 0 -> ESI (0: none), ZF = none.
find16:
    cmpl %edi, %esi
    jae find16_none
    cmpl %eax, (%esi)
    jne find16_next
    testl %ebx, %ebx
    jz find16_sum
    cmpl %ebx, 4(%esi)
    jne find16_next
find16_sum:
    call sum8
    jz find16_done
find16_next:
    addl $0x10, %esi
    jmp find16
find16_none:
    xorl %esi, %esi
find16_done:
    testl %esi, %esi
    ret

# sum8: DL = the sum of ECX (> 0) bytes at ESI; ZF = it is 0.  Preserves the other registers.
sum8:
    pushl %esi
    pushl %ecx
    pushl %eax
    xorl %edx, %edx
sum8_loop:
    lodsb
    addb %al, %dl
    loop sum8_loop
    popl %eax
    popl %ecx
    popl %esi
    testb %dl, %dl
    ret

# check_table: the table at ESI has signature EAX and its Length bytes sum to 0, or FAIL.
check_table:
    cmpl %eax, (%esi)
    jne fail_sig
    pushl %ecx
    movl 4(%esi), %ecx
    cmpl $0x24, %ecx
    jb fail_sig
    call sum8
    popl %ecx
    jnz fail_sum
    ret

# put_sig: write the 4 characters of EAX.
put_sig:
    pushl %eax
    pushl %ecx
    movl $4, %ecx
put_sig_loop:
    call putc32
    rorl $8, %eax
    loop put_sig_loop
    popl %ecx
    popl %eax
    ret

# e820_type: EDX = the E820 type of the range holding address EAX (below 4 GiB), 0 if none.
e820_type:
    pushl %esi
    pushl %ecx
    movl $E820_BUF, %esi
    movl (E820_N), %ecx
    xorl %edx, %edx
    testl %ecx, %ecx
    jz e820_type_done
e820_type_loop:
    cmpl $0, 4(%esi)
    jne e820_type_next
    cmpl (%esi), %eax
    jb e820_type_next
    pushl %eax
    subl (%esi), %eax
    cmpl 8(%esi), %eax
    popl %eax
    jae e820_type_next
    movl 0x10(%esi), %edx
    jmp e820_type_done
e820_type_next:
    addl $0x14, %esi
    loop e820_type_loop
e820_type_done:
    popl %ecx
    popl %esi
    ret

fail_no_rsdp:
    movl $f_no_rsdp, %esi
    jmp fail32
fail_rsdp_rev:
    movl $f_rsdp_rev, %esi
    jmp fail32
fail_rsdp_sum:
    movl $f_rsdp_sum, %esi
    jmp fail32
fail_rsdt_empty:
    movl $f_rsdt_empty, %esi
    jmp fail32
fail_xsdt:
    movl $f_xsdt, %esi
    jmp fail32
fail_no_fadt:
    movl $f_no_fadt, %esi
    jmp fail32
fail_x_dsdt:
    movl $f_x_dsdt, %esi
    jmp fail32
fail_no_s5:
    movl $f_no_s5, %esi
    jmp fail32
fail_facs:
    movl $f_facs, %esi
    jmp fail32
fail_pmtmr:
    movl $f_pmtmr, %esi
    jmp fail32
fail_no_madt:
    movl $f_no_madt, %esi
    jmp fail32
fail_lapic_addr:
    movl $f_lapic_addr, %esi
    jmp fail32
fail_madt_len:
    movl $f_madt_len, %esi
    jmp fail32
fail_apic_id:
    movl $f_apic_id, %esi
    jmp fail32
fail_iso:
    movl $f_iso, %esi
    jmp fail32
fail_no_cpu:
    movl $f_no_cpu, %esi
    jmp fail32
fail_no_ioapic:
    movl $f_no_ioapic, %esi
    jmp fail32
fail_no_hpet:
    movl $f_no_hpet, %esi
    jmp fail32
fail_hpet:
    movl $f_hpet, %esi
    jmp fail32
fail_no_mp:
    movl $f_no_mp, %esi
    jmp fail32
fail_pcmp:
    movl $f_pcmp, %esi
    jmp fail32
fail_mp_entry:
    movl $f_mp_entry, %esi
    jmp fail32
fail_mp_ioapic:
    movl $f_mp_ioapic, %esi
    jmp fail32
fail_mp_len:
    movl $f_mp_len, %esi
    jmp fail32
fail_mp_cpus:
    movl $f_mp_cpus, %esi
    jmp fail32
fail_e820_facs:
    movl $f_e820_facs, %esi
    jmp fail32
fail_e820_tables:
    movl $f_e820_tables, %esi
    jmp fail32
fail_e820_mmio:
    movl $f_e820_mmio, %esi
    jmp fail32
fail_sig:
    movl $f_sig, %esi
    jmp fail32
fail_sum:
    movl $f_sum, %esi
    jmp fail32

msg_rsdp:
    .asciz "rsdp: "
msg_rev:
    .asciz " rev "
msg_rsdt:
    .asciz "rsdt: "
msg_tables:
    .asciz " tables"
msg_xsdt:
    .asciz ", xsdt matches\r\n"
msg_fadt:
    .asciz "fadt: dsdt "
msg_facs:
    .asciz " facs "
msg_s5:
    .asciz " _S5_ pm timer "
msg_runs:
    .asciz " runs, reset "
msg_madt:
    .asciz "madt: "
msg_ioapic:
    .asciz " cpu, ioapic "
msg_version:
    .asciz " version "
msg_overrides:
    .asciz ", "
msg_overrides2:
    .asciz " overrides\r\n"
msg_hpet:
    .asciz "hpet: "
msg_id:
    .asciz " id "
msg_mp:
    .asciz "mp: "
msg_config:
    .asciz " config "
msg_entries:
    .asciz " entries "
msg_cpu:
    .asciz " cpu "
msg_mp_ioapic:
    .asciz " ioapic "
msg_e820:
    .asciz "e820: facs nvs, tables reserved, ioapic and hpet reserved\r\n"
f_no_rsdp:
    .asciz "no RSDP found"
f_rsdp_rev:
    .asciz "RSDP revision below 2"
f_rsdp_sum:
    .asciz "RSDP extended checksum"
f_rsdt_empty:
    .asciz "RSDT lists no tables"
f_xsdt:
    .asciz "XSDT does not list the RSDT's tables"
f_no_fadt:
    .asciz "no FADT"
f_x_dsdt:
    .asciz "X_DSDT differs from DSDT"
f_no_s5:
    .asciz "no _S5_ in the DSDT"
f_facs:
    .asciz "bad FACS"
f_pmtmr:
    .asciz "PM timer does not move"
f_no_madt:
    .asciz "no MADT"
f_lapic_addr:
    .asciz "MADT local APIC address"
f_madt_len:
    .asciz "MADT entry lengths"
f_apic_id:
    .asciz "MADT APIC ID differs from the LAPIC ID register"
f_iso:
    .asciz "IRQ0 override not to GSI 2"
f_no_cpu:
    .asciz "no enabled processor in the MADT"
f_no_ioapic:
    .asciz "no I/O APIC in the MADT"
f_no_hpet:
    .asciz "no HPET table"
f_hpet:
    .asciz "HPET block ID differs from the capabilities register"
f_no_mp:
    .asciz "no MP floating pointer found"
f_pcmp:
    .asciz "bad MP configuration table"
f_mp_entry:
    .asciz "unknown MP entry type"
f_mp_ioapic:
    .asciz "MP I/O APIC address differs from the MADT's"
f_mp_len:
    .asciz "MP entries do not fill the base table"
f_mp_cpus:
    .asciz "MP and MADT processor counts differ"
f_e820_facs:
    .asciz "FACS not in ACPI NVS memory"
f_e820_tables:
    .asciz "tables not in reserved memory"
f_e820_mmio:
    .asciz "I/O APIC or HPET page not reserved"
f_sig:
    .asciz "bad table signature"
f_sum:
    .asciz "bad table checksum"

.include "lib.inc"
.include "lib32.inc"
.include "hv32.inc"
