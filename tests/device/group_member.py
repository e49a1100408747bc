# A group member on the device (docs/protocol.md §7): GroupSessions on its flash, driven one
# command per stdin line by tests/groups/test_groups.py; one answer line each.
#   micropython group_member.py <flash dir> <storage key hex> <own id>
#   members <group> <id,id,...>       -> ok (who may hand over a sender key; docs/groups.md)
#   create <group>                    -> dist <hex>
#   add <group> <member> <dist hex>   -> ok | refused <ErrorClass>
#   send <group> <text>               -> wire <hex>
#   recv <group> <member> <wire hex>  -> text <plaintext> | refused <ErrorClass>
#   remove <group> <member>           -> ok
#   mem                               -> mem <bytes allocated after a collection>
import gc
import sys
from binascii import hexlify, unhexlify

from e2ee import crypto

crypto.default.resolve()
from e2ee.protocol.group import GroupSessions  # noqa: E402
from e2ee.protocol.sender_key import SenderKeyError  # noqa: E402

groups = GroupSessions(sys.argv[1], unhexlify(sys.argv[2]), sys.argv[3])
print("ready")
while True:
    line = sys.stdin.readline()
    if not line:
        break
    words = line.split()
    cmd = words[0]
    if cmd == "members":
        groups.set_members(words[1], words[2].split(",") if len(words) > 2 else [])
        print("ok")
    elif cmd == "create":
        print("dist", hexlify(groups.create(words[1])).decode())
    elif cmd == "add":
        try:
            groups.add_member(words[1], words[2], unhexlify(words[3]))
            print("ok")
        except SenderKeyError as e:
            print("refused", type(e).__name__)
    elif cmd == "send":
        print("wire", hexlify(groups.encrypt(words[1], " ".join(words[2:]).encode())).decode())
    elif cmd == "recv":
        try:
            print("text", groups.decrypt(words[1], words[2], unhexlify(words[3])).decode())
        except SenderKeyError as e:
            print("refused", type(e).__name__)
    elif cmd == "remove":
        groups.remove_member(words[1], words[2])
        print("ok")
    elif cmd == "mem":
        gc.collect()
        print("mem", gc.mem_alloc())
