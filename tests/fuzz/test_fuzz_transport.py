"""Fuzz target: what the broker hands a device or host before any cryptography: inbox frames
(firmware/e2ee/transport/topics.py unframe; docs/broker.md) and the device MQTT client's packet
reader (firmware/e2ee/transport/mqtt.py, MQTT 3.1.1 §2, §3), fed from an in-memory socket.
Outcomes: a frame (which frames back to the same bytes) or topics.BadFrame; packets handled, or
mqtt.MQTTException, or the end of the stream (OSError(-1), the broker closing the connection). A
delivered message never exceeds MAX_PACKET.
"""
from __future__ import annotations

from typing import Any

from fuzzing import fuzz, inputs, outcome
from hypothesis import given
from hypothesis import strategies as st

from e2ee.transport import mqtt, topics

FRAMES = [topics.frame("pump-7", b"\x08\x01\x10\x02" + bytes(40)), topics.frame("gw-1", b""),
          topics.frame("a" * 64, b"\x00"), topics.frame("Gateway.North_2", b"x" * 100)]


@fuzz
@given(inputs(FRAMES, max_size=300))
def test_fuzz_transport_unframe(payload: bytes) -> None:
    ok, frame = outcome(topics.unframe, topics.BadFrame, payload)
    if ok:
        sender, envelope = frame
        assert topics.frame(sender, envelope) == bytes(payload)


class Stream:
    """An in-memory socket: reads come from `data`, writes go to `out`."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.out = bytearray()

    def readinto(self, mv: Any) -> int:
        n = min(len(mv), len(self.data))
        mv[:n] = self.data[:n]
        self.data = self.data[n:]
        return n

    def read(self, n: int) -> bytes:
        got = bytes(self.data[:n])
        self.data = self.data[n:]
        return got

    def write(self, b: Any) -> int:
        self.out += b
        return len(b)

    def close(self) -> None:
        pass


def _publish(topic: bytes, payload: bytes, qos: int = 0, pid: int = 1) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (pid.to_bytes(2, "big") if qos else b"") + payload
    head = bytearray(5)
    end = mqtt._put_len(head, len(body))
    head[0] = 0x30 | qos << 1
    return bytes(head[:end]) + body


INBOX = topics.inbox("plant.north", "pump-7").encode()
PACKETS = [
    _publish(INBOX, FRAMES[0]), _publish(INBOX, FRAMES[3], 1, 7), _publish(topics.crl("plant.north").encode(),
                                                                           b"\x0a" * 300, 1, 9),
    b"\x40\x02\x00\x07",  # PUBACK
    b"\x90\x03\x00\x02\x01",  # SUBACK
    b"\xd0\x00",  # PINGRESP
    b"\x62\x02\x00\x05",  # PUBREL
    _publish(INBOX, b"q2", 2, 3),
]
STREAMS = [b"".join(PACKETS), PACKETS[0] + PACKETS[3], PACKETS[1] * 3, b"".join(reversed(PACKETS))]


@fuzz
@given(data=st.data())
def test_fuzz_transport_mqtt_packets(data: st.DataObject) -> None:
    wire = data.draw(inputs(STREAMS, max_size=400))
    client = mqtt.MQTTClient("pump-7", "127.0.0.1", 1)
    client._bind(Stream(wire))
    delivered: list[tuple[bytes, bytes]] = []
    client.set_callback(lambda topic, msg: delivered.append((topic, msg)))
    try:
        for _ in range(len(wire) + 1):  # every packet takes at least one byte
            client.wait_msg()
    except mqtt.MQTTException:
        pass
    except OSError as e:
        assert e.args == (-1,), e  # the end of the stream: the broker closed the connection
    for topic, msg in delivered:
        assert len(topic) + len(msg) <= mqtt.MAX_PACKET


def test_fuzzfound_unframe_sender_not_utf8() -> None:
    # Found by test_fuzz_transport_unframe: a sender name that is not UTF-8 raised
    # UnicodeDecodeError out of unframe.
    import pytest
    with pytest.raises(topics.BadFrame):
        topics.unframe(b"\x01\x02\xc3\x28" + bytes(8))
