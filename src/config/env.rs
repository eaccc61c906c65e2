//! The `CLIPCAP__SECTION__KEY` environment variables: each overrides one key of the file. A key whose
//! value is a list takes either a TOML array, `CLIPCAP__CAPTIONING__COMPARE='["beam:num_beams=3,length_penalty=0.8", "magic"]'`,
//! or its values separated by commas, which only works when no value holds a comma itself (a decoder
//! spec with two parameters does).

use std::collections::BTreeMap;

use config::builder::{ConfigBuilder, DefaultState};

const PREFIX: &str = "clipcap__";

/// The keys whose value is a list.
const LISTS: &[&str] = &[
    "runtime.providers",
    "plugins.directories",
    "source.formats",
    "captioning.compare",
    "service.allowed_hosts",
    "service.cors_origins",
];

#[derive(Debug)]
pub(super) enum EnvError {
    Config(config::ConfigError),
    /// A list key's value that starts like a TOML array and is not one of strings.
    Array {
        key: String,
        reason: String,
    },
}

/// The process's `CLIPCAP__*` variables (the prefix in any case, as the config crate matches it).
pub(super) fn of_process() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(name, _)| name.to_lowercase().starts_with(PREFIX))
        .collect()
}

/// `builder` with the variables `vars` added: a list key's TOML array as an override, every other
/// variable through the config crate's environment source (which splits list keys on commas and
/// reads numbers and booleans).
pub(super) fn add(
    mut builder: ConfigBuilder<DefaultState>,
    vars: BTreeMap<String, String>,
) -> Result<ConfigBuilder<DefaultState>, EnvError> {
    let mut rest = config::Map::new();
    for (name, value) in vars {
        let key = key_of(&name);
        if LISTS.contains(&key.as_str()) && value.trim_start().starts_with('[') {
            let items = array(&name, &key, &value)?;
            builder = builder.set_override(key, items).map_err(EnvError::Config)?;
        } else {
            rest.insert(name, value);
        }
    }
    let mut environment = config::Environment::with_prefix("CLIPCAP")
        .prefix_separator("__")
        .separator("__")
        .list_separator(",");
    for key in LISTS {
        environment = environment.with_list_parse_key(key);
    }
    Ok(builder.add_source(environment.try_parsing(true).source(Some(rest))))
}

/// `section.key` of the variable `CLIPCAP__SECTION__KEY`.
fn key_of(name: &str) -> String {
    name.get(PREFIX.len()..)
        .unwrap_or_default()
        .split("__")
        .collect::<Vec<_>>()
        .join(".")
        .to_lowercase()
}

/// The strings of the TOML array `value` of variable `name` (for `key`).
fn array(name: &str, key: &str, value: &str) -> Result<Vec<String>, EnvError> {
    let refused = |why: String| EnvError::Array {
        key: key.to_string(),
        reason: format!("{name} = {value:?} is not a TOML array of strings: {why}"),
    };
    let table: toml::Table = toml::from_str(&format!("v = {value}")).map_err(|e| refused(e.message().to_string()))?;
    let items = table["v"].as_array().ok_or_else(|| refused("not an array".into()))?;
    items
        .iter()
        .map(|item| {
            item.as_str()
                .map(str::to_string)
                .ok_or_else(|| refused(format!("{item} is not a string")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{Config, ConfigError};

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::load_with(None, Some(vars))
    }

    #[test]
    fn a_list_key_takes_a_toml_array_or_values_between_commas() {
        let specs = r#"["beam:num_beams=3,length_penalty=0.8", "magic"]"#;
        let config = load(&[("CLIPCAP__CAPTIONING__COMPARE", specs)]).unwrap();
        assert_eq!(
            config.captioning.compare,
            ["beam:num_beams=3,length_penalty=0.8", "magic"]
        );
        let config = load(&[("CLIPCAP__CAPTIONING__COMPARE", "beam:num_beams=3,sample:top_p=0.9")]).unwrap();
        assert_eq!(config.captioning.compare, ["beam:num_beams=3", "sample:top_p=0.9"]);
        let config = load(&[("CLIPCAP__RUNTIME__PROVIDERS", r#"["cuda", "cpu"]"#)]).unwrap();
        assert_eq!(config.runtime.providers.len(), 2);
        // Other keys are as before: numbers parsed, and the file's keys named by the variable.
        let config = load(&[("CLIPCAP__CAPTIONING__INTERVAL_MS", "250")]).unwrap();
        assert_eq!(config.captioning.interval_ms, 250);
    }

    #[test]
    fn a_broken_array_names_its_variable() {
        for broken in [r#"["magic", 3]"#, r#"["magic""#] {
            let err = load(&[("CLIPCAP__CAPTIONING__COMPARE", broken)]).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { key, .. } if key == "captioning.compare"),
                "{err:?}"
            );
            assert!(
                err.to_string().contains("CLIPCAP__CAPTIONING__COMPARE") && err.to_string().contains("TOML array"),
                "{err}"
            );
        }
    }
}
