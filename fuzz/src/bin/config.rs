//! AFL++ entry point of `clipcap_fuzz::config` (scripts/fuzz.sh).

fn main() {
    afl::fuzz!(|data: &[u8]| clipcap_fuzz::config(data));
}
