# syntax: att
# guest: VGA text mode: direct writes to B8000h, CRTC cursor registers, INT 10h AH=02h/03h/06h
#
# Writes "direct: hyperv-emu VGA text" with attribute 1Eh straight into row 10 of the text
# buffer; moves the hardware cursor through CRTC registers 0Eh/0Fh (index 3D4h, data 3D5h) to
# row 12 column 40 and reads both back; sets the cursor with INT 10h AH=02h to row 15 column 20,
# reads it with AH=03h and checks that the BIOS also programmed the CRTC (offset 04C4h); writes
# "line A"/"line B" to rows 16/17 and scrolls that window up one line with AH=06h and blank
# attribute 2Fh, checking the buffer.  Then it puts the cursor at row 19 and reports.
# Serial output:  CRTC cursor ok
#                 INT 10h cursor ok
#                 scroll ok
#                 PASS
# Screen: row 10 "direct: hyperv-emu VGA text" (attribute 1Eh), row 16 "line B", row 17
# blank (attribute 2Fh), rows 19-22 the lines above; the cursor ends at row 23 column 0.
# Exit status 1 (PASS) or 3 (FAIL: reason).

.include "boot.inc"

.set ROW_BYTES, 0xA0           # 80 columns x 2 bytes

main:
    # Direct write with attributes: ES = B800h, row 10.
    movw $0xB800, %ax
    movw %ax, %es
    movw $direct_msg, %si
    movw $0x0A*ROW_BYTES, %di
    movb $0x1E, %ah            # yellow on blue
direct_loop:
    lodsb
    testb %al, %al
    jz direct_done
    stosw
    jmp direct_loop
direct_done:
    xorw %ax, %ax
    movw %ax, %es

    # Hardware cursor: CRTC 0Eh/0Fh = 12*80+40 = 03E8h.
    movw $0x03E8, %bx
    call crtc_set_cursor
    call crtc_get_cursor
    cmpw $0x03E8, %ax
    jne bad_crtc
    movw $0x3D4, %dx           # the index register reads back
    inb %dx, %al
    cmpb $0x0F, %al
    jne bad_crtc

    # BIOS cursor: AH=02h row 15 column 20, AH=03h reads it, the CRTC follows (04C4h).
    movb $0x02, %ah
    xorb %bh, %bh
    movw $0x0F14, %dx
    int $0x10
    movw $0, %dx
    movb $0x03, %ah
    xorb %bh, %bh
    int $0x10
    cmpw $0x0F14, %dx
    jne bad_bios_cursor
    call crtc_get_cursor
    cmpw $0x04C4, %ax
    jne bad_bios_cursor

    # Scroll rows 16-17 up by one, blanking with attribute 2Fh.
    movw $0xB800, %ax
    movw %ax, %es
    movw $line_a_msg, %si
    movw $0x10*ROW_BYTES, %di
    call put_es_di
    movw $line_b_msg, %si
    movw $0x11*ROW_BYTES, %di
    call put_es_di
    movw $0x0601, %ax          # AH=06h scroll up, AL=1 line
    movb $0x2F, %bh
    movw $0x1000, %cx          # top-left row 16 column 0
    movw $0x114F, %dx          # bottom-right row 17 column 79
    int $0x10
    movw $0xB800, %ax
    movw %ax, %es
    cmpw $0x0742, %es:(0x10*ROW_BYTES+0x0A)   # row 16 column 5: 'B', attribute 07h
    jne bad_scroll
    cmpw $0x2F20, %es:(0x11*ROW_BYTES)        # row 17 column 0: blank, attribute 2Fh
    jne bad_scroll
    cmpw $0x2F20, %es:(0x11*ROW_BYTES+0x9E)   # row 17 column 79
    jne bad_scroll
    xorw %ax, %ax
    movw %ax, %es

    movb $0x02, %ah            # report from row 19
    xorb %bh, %bh
    movw $0x1300, %dx
    int $0x10
    movw $crtc_ok_msg, %si
    call puts
    movw $bios_ok_msg, %si
    call puts
    movw $scroll_ok_msg, %si
    call puts
    call pass

bad_crtc:
    movw $bad_crtc_msg, %si
    call fail
bad_bios_cursor:
    movw $bad_bios_msg, %si
    call fail
bad_scroll:
    xorw %ax, %ax
    movw %ax, %es
    movw $bad_scroll_msg, %si
    call fail

# put_es_di: copy the string at DS:SI to ES:DI as cells with attribute 07h.
put_es_di:
    pushw %ax
    movb $0x07, %ah
put_loop:
    lodsb
    testb %al, %al
    jz put_done
    stosw
    jmp put_loop
put_done:
    popw %ax
    ret

# crtc_set_cursor: CRTC Cursor Location High/Low (0Eh/0Fh) = BX.
crtc_set_cursor:
    pushw %ax
    pushw %dx
    movw $0x3D4, %dx
    movb $0x0E, %al
    outb %al, %dx
    incw %dx
    movb %bh, %al
    outb %al, %dx
    decw %dx
    movb $0x0F, %al
    outb %al, %dx
    incw %dx
    movb %bl, %al
    outb %al, %dx
    popw %dx
    popw %ax
    ret

# crtc_get_cursor: AX = CRTC Cursor Location High/Low.
crtc_get_cursor:
    pushw %dx
    movw $0x3D4, %dx
    movb $0x0E, %al
    outb %al, %dx
    incw %dx
    inb %dx, %al
    movb %al, %ah
    decw %dx
    movb $0x0F, %al
    outb %al, %dx
    incw %dx
    inb %dx, %al
    popw %dx
    ret

direct_msg:
    .asciz "direct: hyperv-emu VGA text"
line_a_msg:
    .asciz "line A"
line_b_msg:
    .asciz "line B"
crtc_ok_msg:
    .asciz "CRTC cursor ok\r\n"
bios_ok_msg:
    .asciz "INT 10h cursor ok\r\n"
scroll_ok_msg:
    .asciz "scroll ok\r\n"
bad_crtc_msg:
    .asciz "CRTC cursor location did not read back"
bad_bios_msg:
    .asciz "INT 10h AH=02h/03h cursor or its CRTC copy wrong"
bad_scroll_msg:
    .asciz "INT 10h AH=06h scroll left the wrong cells"

.include "lib.inc"
