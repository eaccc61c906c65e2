//! AFL++ entry point of `clipcap_fuzz::caption_log` (scripts/fuzz.sh).

fn main() {
    afl::fuzz!(|data: &[u8]| clipcap_fuzz::caption_log(data));
}
