//! AFL++ entry point of `clipcap_fuzz::decoder_spec` (scripts/fuzz.sh).

fn main() {
    afl::fuzz!(|data: &[u8]| clipcap_fuzz::decoder_spec(data));
}
