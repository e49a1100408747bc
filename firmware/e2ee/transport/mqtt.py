# A compact MQTT 3.1.1 client with the API of micropython-lib's umqtt.simple (docs/broker.md,
# "Device transport"; docs/boards.md, "Device MQTT client"), so a board can use either:
# MQTTClient(client_id, server, port, user, password, keepalive, ssl), connect(clean_session,
# timeout) -> session present, publish(topic, msg, retain, qos), subscribe(topic, qos),
# set_callback(f), set_last_will(...), wait_msg(), check_msg(), ping(), disconnect().
#
# QoS 0 and 1 (MQTT 3.1.1 §4.3.1, §4.3.2): an outgoing QoS 1 PUBLISH waits for its PUBACK, an
# incoming one is acknowledged after the callback returned, so a message the device did not
# process is redelivered (the ratchet drops duplicates). QoS 2 is refused before anything is sent
# (UnsupportedQoS).
#
# RAM: one 64-byte scratch buffer per client for headers, acknowledgements and draining; an
# incoming PUBLISH is held only when it fits MAX_PACKET (topic and payload, one allocation each),
# anything larger is drained in scratch-sized chunks and counted in `dropped`.
# Runs on MicroPython (socket streams) and CPython (socket recv_into/sendall).
import errno
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
_PUBREC = const(0x50)
_PUBREL = const(0x60)
_PUBCOMP = const(0x70)
_SUBSCRIBE = const(0x82)
_SUBACK = const(0x90)
_PINGRESP = const(0xD0)
_SCRATCH = const(64)  # bytes: headers, acknowledgements, drain chunk
# Largest incoming packet held in RAM: a signed revocation list (certificate.
# MAX_SIGNED_REVOCATION_LIST, 9400 bytes) on its topic (at most 76 bytes with a 64-character fleet)
# with PUBLISH framing is 9480 bytes; an inbox envelope (envelope.MAX_ENVELOPE, 5120) in its frame
# (2 + a 64-character sender) on an inbox topic of at most 145 bytes is 5335. Larger packets are
# drained and dropped (the broker's max_packet_size, 16384, stops even larger ones).
MAX_PACKET = const(9600)
MAX_REMAINING = const(268435455)  # §2.2.3: the most four remaining-length bytes can say
# Outgoing PUBLISH packets up to this size go out in one write: written in pieces, every piece
# after the first waits for the broker to acknowledge the first (Nagle's algorithm meeting the
# broker's delayed ACK), about 40 ms per message. Receipts and commands fit; a larger envelope is
# written in pieces rather than copied whole.
_ONE_WRITE = const(1024)
_ACKS_KEPT = const(8)  # PUBACKs kept for waiting publishes: publishes nested that deep in callbacks


class MQTTException(Exception):
    pass


# CONNACK return code (§3.2.2.3) in args[0], as umqtt.simple: 1 protocol version, 2 client id,
# 3 server unavailable, 4 bad user name or password, 5 not authorised.
class ConnectRefused(MQTTException):
    pass


# SUBACK return code 0x80 in args[0]: the broker's ACL refused the subscription.
class SubscribeRefused(MQTTException):
    pass


# A packet that breaks MQTT 3.1.1 framing: a remaining length over four bytes, lengths that do
# not add up, a CONNACK that is not one. The connection is unusable afterwards.
class MalformedPacket(MQTTException):
    pass


# publish() or subscribe() asked for QoS 2 (or anything but 0 and 1): args[0] is the QoS.
class UnsupportedQoS(MQTTException):
    pass


# Writes the remaining length n (§2.2.3: 7 bits a byte, least significant first, 1 to 4 bytes)
# into buf from index 1; returns the index after it.
def _put_len(buf, n):
    if n < 0 or n > MAX_REMAINING:
        raise ValueError("remaining length %d outside 0..%d" % (n, MAX_REMAINING))
    i = 1
    while n > 0x7F:
        buf[i] = (n & 0x7F) | 0x80
        n >>= 7
        i += 1
    buf[i] = n
    return i + 1


def _b(s):
    return s.encode() if isinstance(s, str) else s


def _check_qos(qos):
    if qos != 0 and qos != 1:
        raise UnsupportedQoS(qos)


# "No data yet" from check_msg's non-blocking read: EAGAIN (CPython: BlockingIOError,
# ssl.SSLWantReadError) or CPython's socket.timeout. Anything else is a broken connection:
# ECONNRESET, EBADF, and ETIMEDOUT too (a non-blocking read has no timeout of its own, so that
# one is TCP giving up on the peer).
def _idle(e):
    code = e.args[0] if e.args else None
    return code == errno.EAGAIN or code == "timed out" or type(e).__name__ == "SSLWantReadError"


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
        self.rx = 0  # packets received, modulo 2**30 (a link's proof of life after PINGREQ)
        self.dropped = 0  # incoming PUBLISH packets over MAX_PACKET or with QoS 2, not delivered
        self._timeout = None
        self._buf = bytearray(_SCRATCH)
        self._mv = memoryview(self._buf)
        self._mv1 = self._mv[:1]  # views made once: slicing per packet would allocate
        self._mv2 = self._mv[:2]
        self._stream = False
        self._into = self._out = self._settimeout = None
        # packet ids of PUBACKs whose publish() has not seen them yet: a publish made from the
        # callback while another waits for its PUBACK (nested) may read the outer one's
        self._acked = []
        self._subacked = 0  # packet id of the last SUBACK
        self._granted = 0  # its return code

    def __repr__(self):  # the password stays out of logs
        return "<MQTTClient %s@%s:%d>" % (self.client_id, self.server, self.port)

    # --- socket I/O ---

    # Binds the socket's read and write methods once (MicroPython streams: readinto/write;
    # CPython: recv_into/sendall) instead of looking them up per packet. A MicroPython TLS
    # socket has no settimeout: the timeout is set again on the TCP socket under it (raw).
    def _bind(self, sock, raw=None):
        self.sock = sock
        into = getattr(sock, "readinto", None)
        self._stream = into is not None
        self._into = into or sock.recv_into
        self._out = getattr(sock, "sendall", None) or sock.write
        if self._timeout is not None:
            self._settimeout = getattr(sock, "settimeout", None) or raw.settimeout

    def _close(self):
        sock, self.sock = self.sock, None
        self._into = self._out = self._settimeout = None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    # Fills the memoryview mv from the socket; the broker closing the connection is OSError(-1).
    def _fill(self, mv):
        got, n = 0, len(mv)
        while got < n:
            r = self._into(mv[got:] if got else mv)
            if not r:
                raise OSError(-1)
            got += r

    # n bytes as a new bytes object: one allocation on MicroPython (a blocking stream read(n)
    # returns n bytes or fewer at end of stream), a bytearray then bytes on CPython.
    def _recv(self, n):
        if self._stream:
            data = self.sock.read(n)
            if data is None or len(data) < n:
                raise OSError(-1)
            return data
        buf = bytearray(n)
        self._fill(memoryview(buf))
        return bytes(buf)

    # Reads and forgets n bytes, a scratch buffer at a time.
    def _skip(self, n):
        mv = self._mv
        while n >= _SCRATCH:
            self._fill(mv)
            n -= _SCRATCH
        if n:
            self._fill(mv[:n])

    def _u16(self):
        self._fill(self._mv2)
        return self._buf[0] << 8 | self._buf[1]

    def _send_str(self, s):
        struct.pack_into("!H", self._buf, 0, len(s))
        self._out(self._mv2)
        self._out(s)

    # PUBACK, PUBREC or PUBCOMP for packet id pid.
    def _ack(self, kind, pid):
        struct.pack_into("!BBH", self._buf, 0, kind, 2, pid)
        self._out(self._mv[:4])

    # §2.2.3: 1 to 4 bytes, 7 bits each, least significant first; a fifth byte is malformed.
    def _recv_len(self):
        n = 0
        for shift in (0, 7, 14, 21):
            self._fill(self._mv1)
            b = self._buf[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
        raise MalformedPacket("remaining length over 4 bytes")

    # Back to blocking (or the connect timeout) after check_msg's non-blocking read.
    def _blocking(self):
        if self._settimeout:
            self._settimeout(self._timeout)
        else:
            self.sock.setblocking(True)

    # --- packets ---

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self.lw_topic, self.lw_msg, self.lw_qos, self.lw_retain = topic, msg, qos, retain

    # Opens the connection and sends CONNECT; returns the CONNACK's session-present flag. timeout
    # (seconds) bounds the TCP connect and every later blocking read and write (OSError
    # ETIMEDOUT). A refused CONNACK raises ConnectRefused(code); any failure closes the socket.
    def connect(self, clean_session=True, timeout=None):
        self._close()
        self._timeout = timeout
        addr = socket.getaddrinfo(self.server, self.port)[0][-1]
        raw = self.sock = socket.socket()
        try:
            if timeout is not None:
                raw.settimeout(timeout)
            raw.connect(addr)
            if self.ssl:  # the certificate's name checked against the host, as umqtt.simple does
                params = self.ssl_params
                if "server_hostname" not in params:
                    params = dict(params, server_hostname=self.server)
                self.sock = self.ssl.wrap_socket(raw, **params)
            self._bind(self.sock, raw)
            self._send_connect(clean_session)
            self._fill(self._mv[:4])
            buf = self._buf
            if buf[0] != _CONNACK or buf[1] != 2:
                raise MalformedPacket("expected CONNACK, got %02x %02x" % (buf[0], buf[1]))
            if buf[3]:
                raise ConnectRefused(buf[3])
            return buf[2] & 1
        except BaseException:
            self._close()
            raise

    def _send_connect(self, clean_session):
        cid, user, pswd = _b(self.client_id), _b(self.user), _b(self.pswd)
        lwt, lwm = _b(self.lw_topic), _b(self.lw_msg)
        size = 12 + len(cid)
        flags = 0x02 if clean_session else 0
        if lwt:
            size += 4 + len(lwt) + len(lwm)
            flags |= 0x04 | (self.lw_qos & 3) << 3 | (0x20 if self.lw_retain else 0)
        if user is not None:
            size += 2 + len(user)
            flags |= 0x80
            if pswd is not None:
                size += 2 + len(pswd)
                flags |= 0x40
        buf = self._buf
        buf[0] = _CONNECT
        i = _put_len(buf, size)
        struct.pack_into("!H4sBBHH", buf, i, 4, b"MQTT", 4, flags, self.keepalive, len(cid))
        self._out(self._mv[:i + 12])
        self._out(cid)
        if lwt:
            self._send_str(lwt)
            self._send_str(lwm)
        if user is not None:
            self._send_str(user)
            if pswd is not None:
                self._send_str(pswd)

    # DISCONNECT, then the socket is closed (also when the write fails); nothing when not connected.
    def disconnect(self):
        if self.sock is None:
            return
        try:
            self._out(b"\xe0\x00")
        finally:
            self._close()

    def ping(self):
        self._out(b"\xc0\x00")

    def _next_pid(self):
        self.pid = self.pid % 0xFFFF + 1
        return self.pid

    def publish(self, topic, msg, retain=False, qos=0):
        _check_qos(qos)
        topic = _b(topic)
        buf = self._buf
        buf[0] = _PUBLISH | qos << 1 | (1 if retain else 0)
        n = 2 + len(topic) + len(msg) + (2 if qos else 0)
        i = _put_len(buf, n)
        struct.pack_into("!H", buf, i, len(topic))
        pid = self._next_pid() if qos else 0
        if i + n <= _ONE_WRITE:
            packet = bytearray(i + n)
            packet[:i + 2] = self._mv[:i + 2]
            end = i + 2 + len(topic)
            packet[i + 2:end] = topic
            if qos:
                struct.pack_into("!H", packet, end, pid)
                end += 2
            packet[end:] = msg
            self._out(packet)
        else:
            self._out(self._mv[:i + 2])
            self._out(topic)
            if qos:
                struct.pack_into("!H", buf, 0, pid)
                self._out(self._mv2)
            self._out(msg)
        if qos:
            acked = self._acked
            while pid not in acked:  # messages arriving meanwhile go to the callback
                self.wait_msg()
            acked.remove(pid)

    # Subscribes to one topic filter; returns the granted QoS. SubscribeRefused(0x80) when the
    # broker refuses it.
    def subscribe(self, topic, qos=0):
        _check_qos(qos)
        topic = _b(topic)
        pid = self._next_pid()
        buf = self._buf
        buf[0] = _SUBSCRIBE
        i = _put_len(buf, 5 + len(topic))
        struct.pack_into("!HH", buf, i, pid, len(topic))
        self._out(self._mv[:i + 4])
        self._out(topic)
        buf[0] = qos
        self._out(self._mv1)
        while self._subacked != pid:
            self.wait_msg()
        if self._granted == 0x80:
            raise SubscribeRefused(0x80)
        return self._granted

    # Reads one packet, blocking. A PUBLISH goes to the callback (then PUBACK for QoS 1) and gives
    # None; control packets give their type (PUBACK 0x40, SUBACK 0x90, PINGRESP 0xD0, ...).
    def wait_msg(self):
        self._fill(self._mv1)
        return self._packet(self._buf[0])

    # wait_msg() when a packet has begun to arrive, else None at once. A broken connection
    # raises OSError (the broker closing it: OSError(-1)); only "no data yet" is None.
    def check_msg(self):
        if self.sock is None:
            raise OSError(errno.ENOTCONN)
        self.sock.setblocking(False)
        try:
            r = self._into(self._mv1)
        except OSError as e:
            if not _idle(e):
                raise
            r = None
        finally:
            self._blocking()
        if r is None:
            return None
        if not r:
            raise OSError(-1)
        return self._packet(self._buf[0])

    def _packet(self, first):
        size = self._recv_len()
        self.rx = (self.rx + 1) & 0x3FFFFFFF
        kind = first & 0xF0
        if kind == _PUBLISH:
            self._publish_in(first, size)
            return None
        if kind == _PUBACK or kind == _PUBREL:
            if size != 2:
                raise MalformedPacket("%02x of %d bytes" % (first, size))
            pid = self._u16()
            if kind == _PUBACK:
                acked = self._acked
                acked.append(pid)
                if len(acked) > _ACKS_KEPT:  # one whose publish gave up (a timeout): forgotten
                    acked.pop(0)
            else:  # the broker completing a dropped QoS 2 message (_publish_in)
                self._ack(_PUBCOMP, pid)
        elif kind == _SUBACK:
            if size < 3:
                raise MalformedPacket("SUBACK of %d bytes" % size)
            pid = self._u16()
            self._fill(self._mv1)
            self._granted = self._buf[0]
            self._skip(size - 3)
            self._subacked = pid
        elif kind == _PINGRESP and size:
            raise MalformedPacket("PINGRESP of %d bytes" % size)
        else:
            self._skip(size)
        return kind

    # §3.3: topic length, topic, packet id (QoS 1 and 2), payload. A packet over MAX_PACKET, or
    # with QoS 2 (this client never subscribes with QoS 2, a broker must not send it), is
    # drained, never held, and counted in `dropped`. It is still acknowledged (PUBACK; PUBREC,
    # then PUBCOMP for the PUBREL) so that the broker does not deliver it again after every
    # reconnect of a persistent session: the device could never take it.
    def _publish_in(self, first, size):
        qos = (first >> 1) & 3
        if qos == 3:
            raise MalformedPacket("PUBLISH with QoS 3")
        tlen = self._u16()
        rest = size - 2 - tlen - (2 if qos else 0)
        if rest < 0:
            raise MalformedPacket("topic of %d bytes in a PUBLISH of %d" % (tlen, size))
        keep = size <= MAX_PACKET and qos < 2
        if keep:
            topic = self._recv(tlen)
        else:
            self._skip(tlen)
        pid = self._u16() if qos else 0
        if keep:
            msg = self._recv(rest)
            if self.cb:
                self.cb(topic, msg)
        else:
            self._skip(rest)
            self.dropped += 1
        if qos:
            self._ack(_PUBACK if qos == 1 else _PUBREC, pid)
