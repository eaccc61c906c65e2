"""The independent side of tests/ros2.rs: Eclipse Cyclone DDS (the `cyclonedds` wheel, which nobody
here wrote) publishes sensor_msgs images under ROS 2's topic and type names, and reads clipcap's
captions back from its std_msgs/String topics.

    cyclone_peer.py PLAN.json OUT.json

PLAN: {"domain": D, "topic": "rt/camera/image_raw" (or its /compressed sibling; null: publish no
images, only read "captions" caption events of another source), "images": [{"id",
"file", "encoding" ("rgb8", "bgr8", "mono8", ..., or "jpeg"/"png" for a CompressedImage of the file's
bytes), "pad" (bytes added to each row), "expect_caption" (false: sent 3 times, no caption awaited)}],
"captions_prefix": the caption topics' namespace, "rt/clipcap" unless given}.
Each image goes out with header.frame_id = its id and is re-sent every 3 s (best effort may lose a
fragment) until a caption event carrying that frame id comes back. OUT gets {"captions": {id: event},
"events": [every caption event, in order], "texts": [every text caption, in order]}. Cyclone is
configured by CYCLONEDDS_URI (the test keeps it on the loopback of its own network namespace).
"""

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cyclonedds.core import Policy, Qos
from cyclonedds.domain import DomainParticipant
from cyclonedds.idl import IdlStruct
from cyclonedds.idl.types import int32, sequence, uint8, uint32
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration
from PIL import Image as PilImage


# The ROS 2 messages as rosidl names them in DDS, fields as in ros2/common_interfaces.
@dataclass
class Time(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: int32
    nanosec: uint32


@dataclass
class Header(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    stamp: Time
    frame_id: str


@dataclass
class Image(IdlStruct, typename="sensor_msgs::msg::dds_::Image_"):
    header: Header
    height: uint32
    width: uint32
    encoding: str
    is_bigendian: uint8
    step: uint32
    data: sequence[uint8]


@dataclass
class CompressedImage(IdlStruct, typename="sensor_msgs::msg::dds_::CompressedImage_"):
    header: Header
    format: str
    data: sequence[uint8]


@dataclass
class String(IdlStruct, typename="std_msgs::msg::dds_::String_"):
    data: str


CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def log(message: str) -> None:
    print(f"cyclone_peer: {message}", file=sys.stderr, flush=True)


def message(image: dict, header: Header) -> "Image | CompressedImage":
    """The image's message: its file's bytes for jpeg/png, else its pixels in the encoding, each row
    padded with `pad` bytes of 0xAB (which a reader that ignores `step` would show)."""
    data = Path(image["file"]).read_bytes()
    if image["encoding"] in ("jpeg", "png"):
        return CompressedImage(header=header, format=image["encoding"], data=list(data))
    encoding = image["encoding"]
    picture = PilImage.open(image["file"])
    if encoding == "mono8":
        pixels = np.asarray(picture.convert("L"))[..., None]
    elif encoding in CHANNELS:
        pixels = np.asarray(picture.convert("RGBA" if CHANNELS[encoding] == 4 else "RGB"))
        if encoding.startswith("bgr"):
            pixels = pixels[..., [2, 1, 0, 3][: pixels.shape[2]]]
    else:  # an encoding clipcap does not read: any bytes will do
        pixels = np.asarray(picture.convert("L"))[..., None].repeat(2, axis=2)
    height, width, channels = pixels.shape
    step = width * channels + image.get("pad", 0)
    rows = np.full((height, step), 0xAB, np.uint8)
    rows[:, : width * channels] = pixels.reshape(height, width * channels)
    return Image(header=header, height=height, width=width, encoding=encoding, is_bigendian=0, step=step,
                 data=list(rows.tobytes()))


def wait(what: str, done: Callable[[], bool], seconds: float) -> None:
    end = time.monotonic() + seconds
    while not done():
        if time.monotonic() > end:
            sys.exit(f"cyclone_peer: no {what} within {seconds:.0f} s")
        time.sleep(0.05)


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    participant = DomainParticipant(plan["domain"])
    reliable = Qos(Policy.Reliability.Reliable(duration(seconds=1)), Policy.History.KeepLast(100))
    prefix = plan.get("captions_prefix", "rt/clipcap")
    events = DataReader(participant, Topic(participant, f"{prefix}/caption_json", String), qos=reliable)
    texts = DataReader(participant, Topic(participant, f"{prefix}/caption", String), qos=reliable)
    for reader in (events, texts):
        wait("match with clipcap's caption publishers",
             lambda reader=reader: reader.get_subscription_matched_status().current_count > 0, 30)
    got = {"captions": {}, "events": [], "texts": []}

    def drain() -> None:
        got["events"] += [json.loads(s.data) for s in events.take(N=100)]
        got["texts"] += [s.data for s in texts.take(N=100)]

    if plan["topic"] is None:
        log("matched on the caption topics")
        wait(f"{plan['captions']} caption(s)", lambda: drain() or len(got["events"]) >= plan["captions"], 60)
        plan["images"] = []
    else:
        kind = CompressedImage if plan["topic"].endswith("/compressed") else Image
        # The sensor-data profile, as camera drivers publish.
        writer = DataWriter(participant, Topic(participant, plan["topic"], kind),
                            qos=Qos(Policy.Reliability.BestEffort, Policy.History.KeepLast(1)))
        wait("match with clipcap's image subscription",
             lambda: writer.get_publication_matched_status().current_count > 0, 30)
        log(f"matched on {plan['topic']}")

    for number, image in enumerate(plan["images"]):
        header = Header(stamp=Time(sec=1_700_000_000 + number, nanosec=1000 * number), frame_id=image["id"])
        sample = message(image, header)
        if not image.get("expect_caption", True):
            for _ in range(3):
                writer.write(sample)
                time.sleep(0.3)
            continue
        end, sent = time.monotonic() + 60, 0.0
        while image["id"] not in got["captions"]:
            if time.monotonic() > end:
                sys.exit(f"cyclone_peer: no caption of {image['id']} within 60 s")
            if time.monotonic() - sent > 3:
                writer.write(sample)
                sent = time.monotonic()
            drain()
            for event in got["events"]:
                if event.get("header", {}).get("frame_id") == image["id"]:
                    got["captions"].setdefault(image["id"], event)
            time.sleep(0.05)
        log(f"{image['id']}: {got['captions'][image['id']]['caption']!r}")
    # The text of the last caption may trail its event by a moment.
    wait("text for every caption event", lambda: drain() or len(got["texts"]) >= len(got["events"]), 10)
    Path(sys.argv[2]).write_text(json.dumps(got))


if __name__ == "__main__":
    main()
