//! `source.kind = "ros2"`: a ROS 2 image topic. Its keys are the `[ros2]` table's (`image_topic`,
//! `compressed`, QoS), which the ROS 2 node checks (crate::ros2); the node subscribes and puts each
//! image in the slot with [`origin`], so the source has no thread of its own. Its captions are
//! labelled `ros2`; it is ready while a publisher sends images.

use std::sync::Arc;

use super::{FrameSlot, Header, Kind, NotReady, Origin, SourceConfig, SourceLabel, SourceStatus, Spec};
use crate::settings::Invalid;
use crate::shutdown::{Shutdown, Worker};
use clipcap_core::imageio::Budget;

pub(super) const SPEC: Spec = Spec { validate, open };

fn validate(_: &SourceConfig) -> Result<(), Invalid> {
    Ok(())
}

fn open(_: &SourceConfig, _budget: Budget) -> super::Opened {
    Ok(Box::new(Topic))
}

/// Where an image of `topic` comes from, with its header.
pub fn origin(topic: &str, header: Header) -> Origin {
    Origin {
        source: SourceLabel::Ros2,
        name: topic.to_string(),
        header: Some(header),
    }
}

struct Topic;

impl Kind for Topic {
    fn readiness(&self, status: &SourceStatus) -> Result<(), NotReady> {
        super::streaming(status, NotReady::TopicSilent, NotReady::NoPublisher)
    }

    fn start(&self, _: Arc<FrameSlot>, _: Arc<SourceStatus>, _: Shutdown) -> std::io::Result<Option<Worker>> {
        Ok(None)
    }
}
