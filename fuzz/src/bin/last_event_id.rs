//! AFL++ entry point of `clipcap_fuzz::last_event_id` (scripts/fuzz.sh).

fn main() {
    afl::fuzz!(|data: &[u8]| clipcap_fuzz::last_event_id(data));
}
