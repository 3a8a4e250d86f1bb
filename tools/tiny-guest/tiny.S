/* A tiny Firecracker test guest (VMS-HERE.md): prints a marker on the serial port, then
   resets through the i8042 controller, so Firecracker exits with code 0. */
.code64
.globl _start
_start:
    lea msg(%rip), %rsi
    mov $(msg_end - msg), %rcx
1:  mov $0x3f8, %dx
    lodsb
    out %al, %dx
    loop 1b
    mov $0xfe, %al
    out %al, $0x64
2:  hlt
    jmp 2b
msg: .ascii "FUSE-TINY-OK\n"
msg_end:
