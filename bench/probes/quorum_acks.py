"""RabbitMQ's CPU per message on a quorum queue, consumed with one ack per delivery and
with one multiple ack per 64 deliveries (bench/FINDINGS.md §15).

Publishes N persistent messages (one confirm each) to a quorum queue of its own, then
consumes them with prefetch 256 and reads the broker's CPU time (beam.smp, /proc) over
each phase. Runs against the local broker as guest; deletes its queue at the end.

    pip install pika
    python3 bench/probes/quorum_acks.py 10000   # both modes, alternating, 2 rounds
"""

import os
import sys
import time
import uuid

import pika

BODY = (
    b'{"event":"user.updated","eventId":"e","userId":"u","version":"1",'
    b'"emails":["a@example.com"],"deliveryAddress":{"street":"1 Main St","city":"Ottawa",'
    b'"province":"ON","postalCode":"K1A 0B1","country":"CA"},"occurredAt":"2026-12-02T00:00:00Z"}'
)


def broker_pid():
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"beam.smp" in f.read():
                        return int(entry)
            except OSError:
                pass
    sys.exit("no beam.smp process: is RabbitMQ running here?")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(mode, n, pid):
    queue = "quorum-acks-probe-" + uuid.uuid4().hex[:8]
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    channel.confirm_delivery()
    for _ in range(n):
        channel.basic_publish("", queue, BODY, pika.BasicProperties(delivery_mode=2))
    channel.basic_qos(prefetch_count=256)
    state = {"got": 0, "last": None}

    def on_message(ch, method, _properties, _body):
        state["got"] += 1
        if mode == "single":
            ch.basic_ack(method.delivery_tag)
        elif state["got"] % 64 == 0 or state["got"] == n:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if state["got"] == n:
            ch.stop_consuming()

    channel.basic_consume(queue, on_message)
    cpu0, wall0 = cpu_seconds(pid), time.time()
    channel.start_consuming()
    cpu1, wall1 = cpu_seconds(pid), time.time()
    channel.queue_delete(queue)
    connection.close()
    return (cpu1 - cpu0) / n * 1e6, n / (wall1 - wall0)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    pid = broker_pid()
    for round_ in (1, 2):
        for mode in ("single", "multiple"):
            us, rate = run(mode, n, pid)
            print(f"round {round_}: consume {n} with {mode:8} acks: RabbitMQ {us:5.1f} us/message, {rate:7.0f} messages/s")


if __name__ == "__main__":
    main()
