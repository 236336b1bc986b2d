#!/usr/bin/env python3
"""Independent MQTT peer for the end-to-end tests (Eclipse paho-mqtt 2.x).

Connects to the hub as a device with its certificate bundle, subscribes to a topic in its own
namespace and to one in another device's namespace, publishes a QoS 1 message to itself and
reports, as one JSON line, what the hub granted and what arrived.

usage: paho_roundtrip.py HOST PORT BUNDLE_DIR DEVICE_ID 311|5
"""
import json
import os
import sys
import threading

import paho.mqtt.client as mqtt

host, port, bundle, device, version = sys.argv[1:6]
protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
done = threading.Event()
result = {"granted": {}, "received": [], "puback": False}

client = mqtt.Client(
    callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
    client_id=device,
    protocol=protocol,
)
client.tls_set(
    ca_certs=os.path.join(bundle, "ca-chain.crt"),
    certfile=os.path.join(bundle, "device.crt"),
    keyfile=os.path.join(bundle, "device.key"),
)
own = f"devices/{device}/echo"
other = "devices/someone-else/echo"


def on_connect(c, userdata, flags, reason_code, properties):
    result["connack"] = str(reason_code)
    c.subscribe([(own, 1), (other, 1)])


def on_subscribe(c, userdata, mid, reason_codes, properties):
    result["granted"] = {own: reason_codes[0].value, other: reason_codes[1].value}
    c.publish(own, b"hello from paho", qos=1)


def on_publish(c, userdata, mid, reason_code, properties):
    result["puback"] = True


def on_message(c, userdata, msg):
    result["received"].append({"topic": msg.topic, "payload": msg.payload.decode(), "qos": msg.qos})
    done.set()


client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_publish = on_publish
client.on_message = on_message
client.connect(host, int(port), keepalive=30)
client.loop_start()
ok = done.wait(10)
client.disconnect()
client.loop_stop()
result["ok"] = ok
print(json.dumps(result))
sys.exit(0 if ok else 1)
