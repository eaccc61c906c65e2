//! AFL++ entry point of `clipcap_fuzz::frame` (scripts/fuzz.sh).

fn main() {
    afl::fuzz!(|data: &[u8]| clipcap_fuzz::frame(data));
}
