# Prekey upkeep over the service channel (docs/provisioning.md, "Service channel"; docs/boards.md,
# "On its own in the field"): a board keeps its one-time prekeys published at the key directory as
# peers use them, and rotates its signed prekey on a schedule, over its MQTT connection alone.
#
#   upkeep = Upkeep(svc, dev.sessions, config)   # config: the board's "config" RecordStore
#   upkeep.step()                                 # from the main loop: never blocks
#
# One request in flight at a time. A board without a clock gets the service's time first
# (Service.sync_time(), again every day: the tick counter carries it). Every `check_every` seconds
# (at once after start, and `soon` seconds after a session start used up one of the board's
# one-time prekeys: the service handed that one out) it asks for its inventory; below `target` published one-time prekeys it uploads up to `batch` more
# (made on the board first where too few unpublished ones are left), until `target` is reached. A
# signed prekey older than `spk_every` seconds is replaced: the new one is made and stored first
# (the key store keeps the previous one, keys.MAX_SIGNED_PREKEYS, for PreKeyMessages on the way),
# then uploaded. The key store is the session manager's own (a second copy would not see what
# sessions use up), saved with sessions.save_keys().
#
# Records in `config` (shared with e2ee.provision): "uploaded-opks", the highest one-time prekey id
# published; "spk-at", when the signed prekey was last made (Unix seconds).
import binascii
import json

from e2ee.protocol.store import NotFound

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

TARGET = const(20)  # one-time prekeys kept at the service: 20 session starts between checks
BATCH = const(8)  # per upload: a request body of about 1 KB
SPK_EVERY = const(604800)  # seconds between signed prekey rotations (a week, as Signal's clients)
CHECK_EVERY = const(3600)  # seconds between inventory checks
SOON = const(30)  # seconds from a used one-time prekey to the check: starts in a burst share one
_RESYNC_MS = const(86400000)  # a clock from the service is asked again after a day
_RETRY = const(60)  # seconds before trying again after a failed request
_UPLOADED = "uploaded-opks"
_SPK_AT = "spk-at"


class Upkeep:
    # on_event(text): what it did ("uploaded 8 one-time prekeys", "rotated signed prekey 2"), for logs.
    def __init__(self, service, sessions, config, target=TARGET, batch=BATCH, spk_every=SPK_EVERY,
                 check_every=CHECK_EVERY, soon=SOON, on_event=None):
        self.service = service
        self.sessions = sessions
        self.config = config
        self.target = target
        self.batch = batch
        self.spk_every = spk_every
        self.check_every = check_every
        self.soon = soon
        self.on_event = on_event
        self.published = None  # one-time prekeys the service holds, as last told
        self.busy = False
        # an upload the inventory's answer asked for (True: with the signed prekey), made at the
        # next step(): answers arrive inside the link's packet handling, which may be waiting for
        # another publish's PUBACK, and a publish from there would nest in that wait
        self._due_upload = None
        self._next = 0  # when to check next (Unix seconds); 0: at once
        self._held = sessions.keystore.one_time_prekey_count()  # a drop: a session start used one
        self._synced_at = None  # the service's ms at the last sync_time() this upkeep asked

    def __repr__(self):
        return "<Upkeep published=%s>" % self.published

    def _get(self, name, default):
        try:
            return int(self.config.get(name))
        except NotFound:
            return default

    def _event(self, text):
        if self.on_event is not None:
            self.on_event(text)

    # Checks the inventory at the next step (say, after a PreKeyMessage used a one-time prekey).
    def check_now(self):
        self._next = 0
        self.published = None

    # One turn: at most one request goes out; nothing while one is in flight.
    def step(self):
        if self.busy:
            return
        if self._due_upload is not None:  # decided in an answer's callback, published here
            spk, self._due_upload = self._due_upload, None
            self._upload(spk)
            return
        now = self.service.now_ms()
        if now is None or (self._synced_at is not None and now - self._synced_at >= _RESYNC_MS):
            self._send(self.service.sync_time, self._timed)
            return
        now //= 1000
        held = self.sessions.keystore.one_time_prekey_count()
        if held < self._held and self._next > now + self.soon:
            self._next = now + self.soon
        self._held = held
        made = self._get(_SPK_AT, None)
        if made is None:  # the signed prekey enrollment published: its age counts from now
            self.config.put(_SPK_AT, b"%d" % now)
        elif now - made >= self.spk_every:
            self.rotate(now)
        elif now >= self._next:
            self._send(self.service.inventory, self._inventory)

    def _timed(self, status, doc):
        self.busy = False
        if status == 200:
            self._synced_at = self.service.now_ms()
        else:
            self._later(_RETRY)

    # Sends with op(callback); a request that cannot go out (no link, no clock) waits _RETRY.
    def _send(self, op, callback, *args):
        try:
            op(*(args + (callback,)))
            self.busy = True
        except Exception:  # ServiceError, OSError: the link is down
            self._later(_RETRY)

    def _later(self, seconds):
        now = self.service.now_ms()
        self._next = (now // 1000 if now else 0) + seconds

    # A new signed prekey, stored, then published (with no one-time prekeys).
    def rotate(self, now=None):
        if now is None:
            now = self.service.now_ms() // 1000
        ks = self.sessions.keystore
        ks.rotate_signed_prekey()
        self.sessions.save_keys()
        self.config.put(_SPK_AT, b"%d" % now)
        self._event("rotated signed prekey %d" % ks.spk_id)
        self._upload(True)

    def _inventory(self, status, doc):
        self.busy = False
        try:
            published, spk_id = int(doc["one_time_prekeys"]), doc["signed_prekey_id"]
        except (KeyError, TypeError, ValueError):
            status = 0  # an answer without an inventory
        if status != 200:
            self._later(_RETRY)
            return
        self.published = published
        if spk_id != self.sessions.keystore.spk_id:
            self._due_upload = True  # a rotation whose upload was lost
        elif self.published < self.target:
            self._due_upload = False
        else:
            self._later(self.check_every)

    # Uploads up to `batch` unpublished one-time prekeys (made now where too few are left), with
    # the current signed prekey when spk.
    def _upload(self, spk):
        ks = self.sessions.keystore
        sent = self._get(_UPLOADED, 0)
        want = 0 if spk else min(self.batch, self.target - (self.published or 0))
        fresh = [i for i in ks.one_time_prekey_ids() if i > sent]
        if len(fresh) < want:
            ks.generate_one_time_prekeys(want - len(fresh))
            self.sessions.save_keys()  # before the service hands them out
        self._held = ks.one_time_prekey_count()
        body, last, _ = upload_body(ks, sent, want, spk)
        self._send(self.service.upload_prekeys, lambda status, answer: self._uploaded(status, answer, last, spk),
                   body)

    def _uploaded(self, status, doc, last, spk):
        self.busy = False
        if status == 200 or status == 409:  # 409: published already (an answer lost before)
            if last > self._get(_UPLOADED, 0):
                self.config.put(_UPLOADED, b"%d" % last)
            if status == 200:
                self._event("uploaded prekeys%s" % (", signed prekey %d" % self.sessions.keystore.spk_id
                                                     if spk else ""))
            self._next = 0  # check again: more may be needed
        else:
            self._event("prekey upload refused: %d %s" % (status, doc))
            self._later(_RETRY)


# The key-directory upload (the JSON body of POST /keys, docs/provisioning.md "Key directory") of
# up to `limit` one-time prekeys of keystore `ks` with ids above `sent`, and its current signed
# prekey when spk: (body bytes, the highest id it carries (else sent), how many it carries).
# e2ee.provision's factory uploads build theirs here too.
def upload_body(ks, sent, limit, spk):
    opks = []
    for i, pub in ks.one_time_prekey_publics():
        if i > sent and len(opks) < limit:
            opks.append({"opk_id": i, "opk_pub": _b64(pub)})
    doc = {"one_time_prekeys": opks}
    if spk:
        b = ks.bundle()
        doc["signed_prekey"] = {"spk_id": b.spk_id, "spk_pub": _b64(b.spk_pub), "spk_sig": _b64(b.spk_sig)}
    return json.dumps(doc).encode(), opks[-1]["opk_id"] if opks else sent, len(opks)


def _b64(data):
    return binascii.b2a_base64(data, newline=False).decode()
