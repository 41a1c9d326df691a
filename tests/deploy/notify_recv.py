#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""notify_recv.py SOCKET OUT SECONDS -- stand in for systemd's notification
socket: bind a datagram socket at SOCKET with SO_PASSCRED (as systemd does),
and append one line per datagram to OUT: "<sender pid>\t<seconds since start>\t<text>"
with newlines in the text written as "|". Stops after SECONDS."""
import os
import socket
import struct
import sys
import time

path, out, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
if os.path.exists(path):
    os.unlink(path)
s.bind(path)
t0 = time.monotonic()
ucred = struct.calcsize("3i")
with open(out, "a", buffering=1) as f:
    f.write("bound\t0\t\n")
    while True:
        left = seconds - (time.monotonic() - t0)
        if left <= 0:
            break
        s.settimeout(left)
        try:
            data, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(ucred))
        except socket.timeout:
            break
        pid = 0
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", payload[:ucred])[0]
        text = data.decode("utf-8", "replace").replace("\n", "|")
        f.write(f"{pid}\t{time.monotonic() - t0:.3f}\t{text}\n")
os.unlink(path)
