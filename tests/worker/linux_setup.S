# syntax: att
# A synthetic Linux "setup code" for tests/worker/test_linuxboot.py: the real-mode part of a
# minimal bzImage, assembled for base 200h (its first byte is file offset 200h, the setup
# entry; DS-relative offsets are file offsets).  The test puts the setup header at 1F1h-26Fh
# and a protected-mode payload after the setup sectors.
#
# It checks what Documentation/x86/boot.rst promises the setup code on entry: CS = DS + 20h,
# DS = ES = FS = GS = SS = 9000h, SP at the heap's end (E000h), interrupts off; and the header
# fields the loader writes: type_of_loader FFh, LOADED_HIGH and CAN_USE_HEAP, heap_end_ptr,
# cmd_line_ptr and the command line itself, vid_mode from vga=ext, the initrd page-aligned,
# below initrd_addr_max, above the kernel and inside the RAM that INT 15h E820 reports.  Then
# it switches to "unreal" mode (a 4 GiB FS limit) to sum the bytes of the protected-mode
# kernel at 100000h and of the initrd, prints both sums for the test to compare, and ends
# with PASS (exit status 1) or FAIL: <reason> (exit status 3).
.code16
.set COM1, 0x3F8
.set EXIT_PORT, 0xF4
.set SETUP_SEG, 0x9000
.set HEAP_END, 0xE000
.set E820_BUF, 0xF000
entry:
    .byte 0xEB, 0x7E           # jmp short main (file offset 280h), over the setup header
    .fill 0x7E, 1, 0
main:
    # The entry state, saved before anything changes it.
    movw %sp, (v_sp)
    pushfw
    popw (v_flags)
    movw %cs, (v_cs)
    movw %ds, (v_ds)
    movw %es, (v_es)
    movw %fs, (v_fs)
    movw %gs, (v_gs)
    movw %ss, (v_ss)
    movw $m_seg, %si
    cmpw $SETUP_SEG, (v_ds)
    jne fail
    movw (v_ds), %ax
    cmpw %ax, (v_es)
    jne fail
    cmpw %ax, (v_fs)
    jne fail
    cmpw %ax, (v_gs)
    jne fail
    cmpw %ax, (v_ss)
    jne fail
    addw $0x20, %ax
    cmpw %ax, (v_cs)
    jne fail
    movw $m_sp, %si
    cmpw $HEAP_END, (v_sp)
    jne fail
    movw $m_if, %si
    testw $0x0200, (v_flags)
    jnz fail
    # The header fields the loader fills in.
    movw $m_loader, %si
    cmpb $0xFF, (0x210)
    jne fail
    movw $m_loadflags, %si
    movb (0x211), %al
    andb $0x81, %al
    cmpb $0x81, %al
    jne fail
    movw $m_heap, %si
    cmpw $HEAP_END-0x200, (0x224)
    jne fail
    movw $m_cmdptr, %si
    cmpl $0x90000+HEAP_END, (0x228)
    jne fail
    movw $m_vid, %si
    cmpw $0xFFFE, (0x1FA)
    jne fail
    movw $m_cmdline, %si
    movw $expect_cmdline, %bx
    movw $HEAP_END, %di
cmd_loop:
    movb (%bx), %al
    cmpb %al, (%di)
    jne fail
    incw %bx
    incw %di
    testb %al, %al
    jnz cmd_loop
    # RAM top: the end of the E820 RAM entry that holds 1 MiB.
    call ram_top
    movw $m_e820, %si
    testl %eax, %eax
    jz fail
    movl %eax, (v_top)
    # The initrd: page-aligned, above the kernel, below both initrd_addr_max and RAM's end.
    movw $m_initrd, %si
    movl (0x218), %eax
    testl $0xFFF, %eax
    jnz fail
    movzwl (0x1F4), %ecx        # syssize (16-byte units): the kernel's end
    shll $0x04, %ecx
    addl $0x100000, %ecx
    cmpl %ecx, %eax
    jb fail
    addl (0x21C), %eax
    cmpl (v_top), %eax
    ja fail
    decl %eax
    cmpl (0x22C), %eax
    ja fail
    # Unreal mode: load FS from a flat 4 GiB data descriptor in protected mode, go back.
    cli
    movl $gdt, %eax
    addl $0x90000, %eax
    movl %eax, (gdtr+2)
    lgdtw (gdtr)
    movl %cr0, %eax
    orb $0x01, %al
    movl %eax, %cr0
    movw $0x08, %bx
    movw %bx, %fs
    andb $0xFE, %al
    movl %eax, %cr0             # FS keeps base 0 and its 4 GiB limit until it is reloaded
    movw $m_kernel, %si
    cmpl $0x454B4D50, %fs:(0x100000)    # "PMKE"
    jne fail
    movl $0x100000, %esi
    movzwl (0x1F4), %ecx
    shll $0x04, %ecx
    call sum_bytes
    movw $m_ksum, %si
    call puts
    call hex32
    call newline
    movl (0x218), %esi
    movl (0x21C), %ecx
    call sum_bytes
    movw $m_isum, %si
    call puts
    call hex32
    call newline
    movl (0x218), %eax
    movw $m_iaddr, %si
    call puts
    call hex32
    call newline
    jmp pass

# sum_bytes: EAX = the 32-bit sum of ECX bytes at linear ESI (through FS, flat).
sum_bytes:
    xorl %eax, %eax
    xorl %edx, %edx
    jecxz sb_done
sb_loop:
    movb %fs:(%esi), %dl
    addl %edx, %eax
    incl %esi
    decl %ecx
    jnz sb_loop
sb_done:
    ret

# ram_top: EAX = end of the E820 type-1 range containing 100000h, 0 if none.
ram_top:
    xorl %ebx, %ebx
    movl $0x0, (v_top)
rt_next:
    movl $0xE820, %eax
    movl $0x534D4150, %edx
    movl $0x14, %ecx
    movw $E820_BUF, %di
    int $0x15
    jc rt_done
    cmpl $0x01, (E820_BUF+0x10)
    jne rt_skip
    cmpl $0x100000, (E820_BUF)
    ja rt_skip
    movl (E820_BUF), %eax
    addl (E820_BUF+0x08), %eax
    cmpl $0x100000, %eax
    jbe rt_skip
    movl %eax, (v_top)
rt_skip:
    testl %ebx, %ebx
    jnz rt_next
rt_done:
    movl (v_top), %eax
    ret

.include "../../guests/lib.inc"

v_sp: .word 0
v_flags: .word 0
v_cs: .word 0
v_ds: .word 0
v_es: .word 0
v_fs: .word 0
v_gs: .word 0
v_ss: .word 0
v_top: .long 0
gdtr:
    .word 0x0F
    .long 0
gdt:
    .long 0, 0
    .long 0x0000FFFF, 0x00CF9200
expect_cmdline:
    .asciz "console=ttyS0 vga=ext hello=world"
m_seg: .asciz "segments"
m_sp: .asciz "stack pointer"
m_if: .asciz "interrupts on"
m_loader: .asciz "type_of_loader"
m_loadflags: .asciz "loadflags"
m_heap: .asciz "heap_end_ptr"
m_cmdptr: .asciz "cmd_line_ptr"
m_vid: .asciz "vid_mode"
m_cmdline: .asciz "command line"
m_e820: .asciz "no RAM above 1 MiB in E820"
m_initrd: .asciz "initrd placement"
m_kernel: .asciz "protected-mode kernel not at 1 MiB"
m_ksum: .asciz "kernel sum "
m_isum: .asciz "initrd sum "
m_iaddr: .asciz "initrd at "
