# The board's network before the node opens (docs/boards.md, "Examples"): Wi-Fi from the settings'
# "wifi" entry ({"ssid": ..., "password": ...} in e2ee_data/node.json), then the time from NTP
# (ntptime) so certificates can be checked; a board without the `network` module (the virtual
# board, a board on Ethernet the port brings up itself) skips both. Without NTP the upkeep asks
# the service for its time (e2ee.upkeep). Blocks: call once at power-on, before Node.open().
import time


class NetworkError(Exception):
    pass


# Joins the Wi-Fi network (timeout_ms to get an address, else NetworkError) and sets the clock;
# returns the interface's address, or None without `network`.
def up(config, timeout_ms=30000):
    try:
        import network
    except ImportError:
        return None
    wifi = config.get("wifi") or {}
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(wifi.get("ssid", ""), wifi.get("password", ""))
        start = time.ticks_ms()
        while not wlan.isconnected():
            if time.ticks_diff(time.ticks_ms(), start) > timeout_ms:
                raise NetworkError("no Wi-Fi connection to %r within %d ms" % (wifi.get("ssid"), timeout_ms))
            time.sleep_ms(100)
    try:
        import ntptime
        ntptime.settime()  # UTC into the RTC
    except Exception:  # no NTP server reachable: the service's time is used instead
        pass
    return wlan.ifconfig()[0]
