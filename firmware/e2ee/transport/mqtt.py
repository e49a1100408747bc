# A compact MQTT 3.1.1 client with the API of micropython-lib's umqtt.simple (docs/broker.md,
# "Device transport"), so a board can use either: MQTTClient(client_id, server, port, user,
# password, keepalive, ssl), connect(clean_session) -> session present, publish(topic, msg,
# retain, qos), subscribe(topic, qos), set_callback(f), set_last_will(...), wait_msg(),
# check_msg(), ping(), disconnect(). QoS 0 and 1 (MQTT 3.1.1 §4.3.1, §4.3.2): an outgoing QoS 1
# PUBLISH waits for its PUBACK, an incoming one is acknowledged after the callback returned, so a
# message the device did not process is redelivered (the ratchet drops duplicates).
# Runs on MicroPython (socket streams) and CPython (socket recv/sendall).
import socket
import struct

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)
MAX_PACKET = const(8192)  # largest incoming packet accepted (envelopes are at most 4400 bytes)


class MQTTException(Exception):
    pass


class MQTTClient:
    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0, ssl=None,
                 ssl_params=None):
        self.client_id = client_id
        self.server = server
        self.port = port or (8883 if ssl else 1883)
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.ssl = ssl
        self.ssl_params = ssl_params or {}
        self.sock = None
        self.cb = None
        self.pid = 0
        self.lw_topic = None
        self.lw_msg = None
        self.lw_qos = 0
        self.lw_retain = False
        self._peeked = None
        self._acked = 0
        self._subacked = (0, 0)

    def __repr__(self):  # the password stays out of logs
        return "<MQTTClient %s@%s:%d>" % (self.client_id, self.server, self.port)

    # --- socket I/O ---

    def _read(self, n):
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        if self._peeked:  # the byte check_msg() looked at
            buf[0] = self._peeked[0]
            self._peeked = None
            got = 1
        while got < n:
            if hasattr(self.sock, "readinto"):
                r = self.sock.readinto(view[got:])
            else:
                r = self.sock.recv_into(view[got:])
            if not r:
                raise OSError(-1)  # the broker closed the connection
            got += r
        return buf

    def _write(self, data, n=None):
        data = memoryview(data)[:n] if n is not None else data
        if hasattr(self.sock, "sendall"):
            self.sock.sendall(data)
        else:
            self.sock.write(data)

    def _send_str(self, s):
        s = s.encode() if isinstance(s, str) else s
        self._write(struct.pack("!H", len(s)))
        self._write(s)

    def _recv_len(self):
        n, shift = 0, 0
        while True:
            b = self._read(1)[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7
            if shift > 21:
                raise MQTTException("malformed remaining length")

    def _header(self, kind, size):
        out = bytearray(5)
        out[0] = kind
        i = 1
        while size > 0x7F:
            out[i] = (size & 0x7F) | 0x80
            size >>= 7
            i += 1
        out[i] = size
        self._write(out, i + 1)

    # --- packets ---

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self.lw_topic, self.lw_msg, self.lw_qos, self.lw_retain = topic, msg, qos, retain

    def connect(self, clean_session=True, timeout=None):
        addr = socket.getaddrinfo(self.server, self.port)[0][-1]
        self.sock = socket.socket()
        if timeout is not None and hasattr(self.sock, "settimeout"):
            self.sock.settimeout(timeout)
        self.sock.connect(addr)
        if self.ssl:
            self.sock = self.ssl.wrap_socket(self.sock, **self.ssl_params)
        cid = self.client_id.encode() if isinstance(self.client_id, str) else self.client_id
        size = 10 + 2 + len(cid)
        flags = 0x02 if clean_session else 0
        if self.user is not None:
            size += 2 + len(self.user)
            flags |= 0x80
            if self.pswd is not None:
                size += 2 + len(self.pswd)
                flags |= 0x40
        if self.lw_topic:
            size += 2 + len(self.lw_topic) + 2 + len(self.lw_msg)
            flags |= 0x04 | (self.lw_qos & 0x1) << 3 | (self.lw_qos & 0x2) << 3 | self.lw_retain << 5
        self._header(_CONNECT, size)
        self._write(b"\x00\x04MQTT\x04" + bytes((flags,)) + struct.pack("!H", self.keepalive))
        self._send_str(cid)
        if self.lw_topic:
            self._send_str(self.lw_topic)
            self._send_str(self.lw_msg)
        if self.user is not None:
            self._send_str(self.user)
            if self.pswd is not None:
                self._send_str(self.pswd)
        resp = self._read(4)
        if resp[0] != _CONNACK or resp[1] != 2:
            raise MQTTException("expected CONNACK")
        if resp[3] != 0:
            raise MQTTException(resp[3])  # 4: bad user name or password, 5: not authorised
        return resp[2] & 1

    def disconnect(self):
        try:
            self._write(b"\xe0\x00")
        finally:
            self.sock.close()
            self.sock = None

    def ping(self):
        self._write(b"\xc0\x00")

    def _next_pid(self):
        self.pid = self.pid % 0xFFFF + 1
        return self.pid

    def publish(self, topic, msg, retain=False, qos=0):
        topic = topic.encode() if isinstance(topic, str) else topic
        size = 2 + len(topic) + len(msg) + (2 if qos else 0)
        self._header(_PUBLISH | qos << 1 | retain, size)
        self._send_str(topic)
        if qos:
            pid = self._next_pid()
            self._write(struct.pack("!H", pid))
        self._write(msg)
        if qos == 1:
            while True:  # messages arriving meanwhile go to the callback
                op = self.wait_msg()
                if op == _PUBACK:
                    if self._acked == pid:
                        return
        elif qos == 2:
            raise MQTTException("QoS 2 is not supported")

    def subscribe(self, topic, qos=0):
        topic = topic.encode() if isinstance(topic, str) else topic
        pid = self._next_pid()
        self._header(_SUBSCRIBE, 2 + 2 + len(topic) + 1)
        self._write(struct.pack("!H", pid))
        self._send_str(topic)
        self._write(bytes((qos,)))
        while True:
            op = self.wait_msg()
            if op == _SUBACK:
                if self._subacked[0] == pid:
                    if self._subacked[1] == 0x80:
                        raise MQTTException(0x80)  # the broker refused the subscription (ACL)
                    return self._subacked[1]

    # Reads one packet. PUBLISH goes to the callback (then PUBACK for QoS 1); returns the packet
    # type of control packets (PUBACK, SUBACK, PINGRESP), None for a PUBLISH.
    def wait_msg(self):
        first = self._read(1)[0]
        size = self._recv_len()
        if size > MAX_PACKET:
            raise MQTTException("packet of %d bytes exceeds %d" % (size, MAX_PACKET))
        kind = first & 0xF0
        if kind == _PINGRESP:
            return _PINGRESP
        if kind == _PUBACK:
            self._acked = struct.unpack("!H", self._read(2))[0]
            return _PUBACK
        if kind == _SUBACK:
            body = self._read(size)
            self._subacked = (struct.unpack("!H", body[:2])[0], body[2])
            return _SUBACK
        if kind != _PUBLISH:
            self._read(size)
            return kind
        body = self._read(size)
        tlen = struct.unpack("!H", body[:2])[0]
        topic = bytes(body[2:2 + tlen])
        pos = 2 + tlen
        qos = (first >> 1) & 3
        pid = None
        if qos:
            pid = struct.unpack("!H", body[pos:pos + 2])[0]
            pos += 2
        if self.cb:
            self.cb(topic, bytes(body[pos:]))
        if qos == 1:
            self._write(b"\x40\x02" + struct.pack("!H", pid))
        return None

    # wait_msg() if a packet is waiting, else None at once.
    def check_msg(self):
        self.sock.setblocking(False)
        try:
            first = self.sock.read(1) if hasattr(self.sock, "read") else self.sock.recv(1)
        except OSError:  # nothing to read (EAGAIN)
            first = None
        finally:
            self.sock.setblocking(True)
        if first is None:
            return None
        if not first:
            raise OSError(-1)  # the broker closed the connection
        self._peeked = first
        return self.wait_msg()
