# Transports that carry envelopes between devices (docs/broker.md): an MQTT 3.1.1 client with
# micropython-lib's umqtt.simple API (mqtt.py), the device's inbox link on top of it (link.py) and
# the service channel to the provisioning service over the same connection (service.py).
