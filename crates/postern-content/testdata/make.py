"""Writes the attachment sniffer's test vectors (run from this folder:
`python3 make.py`). Each is the smallest file that carries its format's
real header, built here rather than copied so its bytes are known; the
names are what the tests expect the sniffer to say."""

import struct
import zipfile
import zlib


def write(name, data):
    with open(name, "wb") as f:
        f.write(data)


# Windows PE: a DOS header ("MZ", e_lfanew at 0x3c) pointing at "PE\0\0"
# and a COFF header for x86-64.
dos = bytearray(64)
dos[0:2] = b"MZ"
struct.pack_into("<I", dos, 0x3C, 64)
coff = b"PE\0\0" + struct.pack("<HHIIIHH", 0x8664, 0, 0, 0, 0, 0xF0, 0x22)
write("pe.bin", bytes(dos) + coff + bytes(64))

# ELF: 64-bit little-endian executable header (64 octets) for x86-64.
elf = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, 0x400078, 64, 0, 0, 64, 56, 1, 0, 0, 0)
write("elf.bin", elf + bytes(64))

# Mach-O: 64-bit magic, CPU x86-64, MH_EXECUTE.
write("macho.bin", struct.pack("<IiiIIII", 0xFEEDFACF, 0x01000007, 3, 2, 0, 0, 0) + bytes(32))

# Windows shortcut: header size 0x4C and the ShellLink CLSID (MS-SHLLINK 2.1).
write("shortcut.bin", struct.pack("<I", 0x4C) + bytes.fromhex("0114020000000000c000000000000046") + bytes(56))

# ISO 9660: 16 empty sectors, then a primary volume descriptor ("CD001").
write("disk.iso.bin", bytes(0x8000) + b"\x01CD001\x01" + bytes(2041))

# VHDX: the file type identifier at offset 0.
write("disk.vhdx.bin", b"vhdxfile" + bytes(120))

# PNG: signature, IHDR for 1x1 grey, IDAT, IEND.
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(b"\0\0")) + chunk(b"IEND", b"")
write("pixel.png.bin", png)

# PDF: the header and an empty document.
write("empty.pdf.bin", b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")

# Zip archives: one with a script inside, one with only text.
with zipfile.ZipFile("script.zip.bin", "w") as z:
    z.writestr("readme.txt", "see the invoice\n")
    z.writestr("invoice/open-me.JS", "WScript.Echo('hi');\n")
with zipfile.ZipFile("text.zip.bin", "w") as z:
    z.writestr("notes.txt", "nothing to see\n")

# A script: text, no magic bytes at all.
write("script.js.bin", b"var shell = new ActiveXObject('WScript.Shell');\r\n")
