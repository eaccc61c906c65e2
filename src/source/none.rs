//! `source.kind = "none"`: no frames; only images POSTed to the API are captioned. It has no keys and
//! no thread, and is always ready.

use std::sync::Arc;

use super::{FrameSlot, Kind, NotReady, SourceConfig, SourceStatus, Spec};
use crate::settings::Invalid;
use crate::shutdown::{Shutdown, Worker};
use clipcap_core::imageio::Budget;

pub(super) const SPEC: Spec = Spec { validate, open };

fn validate(_: &SourceConfig) -> Result<(), Invalid> {
    Ok(())
}

fn open(_: &SourceConfig, _budget: Budget) -> super::Opened {
    Ok(Box::new(Uploads))
}

struct Uploads;

impl Kind for Uploads {
    fn readiness(&self, _: &SourceStatus) -> Result<(), NotReady> {
        Ok(())
    }

    fn start(&self, _: Arc<FrameSlot>, _: Arc<SourceStatus>, _: Shutdown) -> std::io::Result<Option<Worker>> {
        Ok(None)
    }
}
