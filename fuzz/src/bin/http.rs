//! AFL++ entry point of `clipcap_fuzz::http` (scripts/fuzz.sh).

fn main() {
    afl::fuzz!(|data: &[u8]| clipcap_fuzz::http(data));
}
