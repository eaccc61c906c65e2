//! The records the daemon publishes: captions, comparisons and votes, as the HTTP API, the event
//! stream, the caption log, the MQTT publisher and the ROS 2 node send them and as `clipcap report`
//! reads them back. Every part that reads them depends on this module, none on another part.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::source::{Header, SourceLabel};
use clipcap_core::captioner::Caption;

/// A caption of another decoder on the same frame (captioning.compare).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Compared {
    pub decoder: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Milliseconds this decoder took (its steps included), as `ms.decode` of a caption.
    pub ms: f64,
    /// CLIPScore of the caption (when the bundle has CLIP's text encoder).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_score: Option<f64>,
    /// The shadow bundle that made it (captioning.shadow_bundle); absent for the live bundle's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleId>,
}

/// How a shadow bundle's captions are labelled where decoders are: `DECODER@BUNDLE`.
pub fn shadow_label(decoder: &str, bundle: &str) -> String {
    format!("{decoder}@{bundle}")
}

/// The comparison of one source caption: its decoder and CLIPScore, and the other decoders' captions.
/// Published after the caption itself, so that comparing never delays it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    /// The caption's id.
    pub id: u64,
    /// The name of the caption's source. Empty in logs from before sources had names.
    #[serde(default)]
    pub source: String,
    pub decoder: String,
    pub caption: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_score: Option<f64>,
    /// The caption's decoding milliseconds.
    pub ms: f64,
    pub compare: Vec<Compared>,
    /// The live bundle that made the caption. Absent in logs from before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleId>,
    /// The JPEG of the frame kept for `clipcap report` (captioning.keep_compared_frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<String>,
}

/// The decoders that captioned a compared frame: the `primary` one, then those of `compare` that did
/// not fail.
pub fn captioned<'a>(primary: &'a str, compare: &'a [Compared]) -> impl Iterator<Item = &'a str> {
    std::iter::once(primary).chain(
        compare
            .iter()
            .filter(|x| x.caption.is_some())
            .map(|x| x.decoder.as_str()),
    )
}

impl Comparison {
    /// The decoders that captioned the frame ([`captioned`]).
    pub fn captioned(&self) -> impl Iterator<Item = &str> {
        captioned(&self.decoder, &self.compare)
    }
}

/// A person's choice of the best caption of a frame (the kiosk page's votes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vote {
    /// The caption's id.
    pub id: u64,
    pub decoder: String,
    /// The client's address; absent with captioning.vote_addresses off.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client: String,
    /// Who voted: `token:NAME` with tokens, else `address:IP`, or `anonymous:KEY` (a keyed hash of the
    /// address, the key new each run) with captioning.vote_addresses off; one vote each per caption.
    /// Empty in logs from before it was recorded, which stand for `client`.
    #[serde(default)]
    pub voter: String,
    pub time: String,
}

impl Vote {
    /// Who voted (`voter`, or the address for older records).
    pub fn voter(&self) -> &str {
        if self.voter.is_empty() {
            &self.client
        } else {
            &self.voter
        }
    }
}

/// What the event stream carries.
#[derive(Debug, Clone)]
pub enum Published {
    Caption(Arc<CaptionEvent>),
    Comparison(Arc<Comparison>),
}

/// The bundle that made a caption: its folder's name and the SHA-256 of its manifest.toml (which pins
/// every file of it), so that records from before and after a reload, or from two devices, tell
/// their models apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleId {
    pub name: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaptionEvent {
    pub id: u64,
    /// When the frame was captured (or the image uploaded), RFC 3339.
    pub time: String,
    /// The name of its source (`[[sources]]`, or the label of a lone `[source]`), or `upload`.
    pub source: String,
    /// The kind of its source: camera, folder, ros2, or upload.
    pub kind: SourceLabel,
    /// The device, file, topic or client it came from.
    pub origin: String,
    /// The ROS 2 image's header (stamp and frame id), when it came from a ROS 2 topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<Header>,
    #[serde(flatten)]
    pub caption: Caption,
    pub bundle: BundleId,
    /// CLIPScore of the caption, once a comparison of its frame ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_score: Option<f64>,
    /// The other decoders' captions, once a comparison of its frame ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub compare: Vec<Compared>,
}
