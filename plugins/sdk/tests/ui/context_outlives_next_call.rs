// The host reuses one buffer for every `context` call: a first slice still in use when a second
// call is made would read replaced (or freed) memory. The SDK's borrows refuse to compile it.
use clipcap_plugin_sdk::Host;

fn two_contexts(host: &mut Host) -> Result<f32, String> {
    let first = host.context(0)?;
    let second = host.context(1)?;
    Ok(first[0] + second[0])
}

fn context_across_a_step(host: &mut Host) -> Result<f32, String> {
    let states = host.context(0)?;
    host.step(&[0], &[1])?;
    Ok(states[0])
}

fn main() {
    let _ = (two_contexts, context_across_a_step);
}
