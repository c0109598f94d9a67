//! The two auth methods and their names: the one mapping between the protocol's
//! `AuthType`, the command line's `Method` and the names people type and read
//! (`qwen-oauth`, `openai`: Qwen Code's `/auth` names and `settings.json` values).
use qwend_shared::api::AuthType;

pub const QWEN_OAUTH: &str = "qwen-oauth";
pub const OPENAI: &str = "openai";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    #[value(name = QWEN_OAUTH)]
    QwenOauth,
    #[value(name = OPENAI)]
    Openai,
}

impl Method {
    /// Every method, in the menu's order.
    pub const ALL: [Method; 2] = [Method::QwenOauth, Method::Openai];

    pub fn name(self) -> &'static str {
        match self {
            Method::QwenOauth => QWEN_OAUTH,
            Method::Openai => OPENAI,
        }
    }

    /// The method a name (as typed, surrounding blanks ignored) stands for.
    pub fn parse(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name.trim())
    }

    pub fn auth_type(self) -> AuthType {
        match self {
            Method::QwenOauth => AuthType::QwenOauth,
            Method::Openai => AuthType::Openai,
        }
    }

    /// `None` for `Unspecified`: no method.
    pub fn of(t: AuthType) -> Option<Method> {
        match t {
            AuthType::QwenOauth => Some(Method::QwenOauth),
            AuthType::Openai => Some(Method::Openai),
            AuthType::Unspecified => None,
        }
    }
}

/// The name of a protocol auth type; `None` when no method is set.
pub fn name(t: AuthType) -> Option<&'static str> {
    Method::of(t).map(Method::name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn one_name_per_method_everywhere() {
        for m in Method::ALL {
            let clap_name = m.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(clap_name, m.name());
            assert_eq!(Method::parse(&format!(" {clap_name}\n")), Some(m));
            assert_eq!(Method::of(m.auth_type()), Some(m));
            assert_eq!(name(m.auth_type()), Some(m.name()));
        }
        assert_eq!(Method::value_variants(), Method::ALL);
        assert_eq!(name(AuthType::Unspecified), None);
        assert_eq!(Method::parse("1"), None);
    }
}
