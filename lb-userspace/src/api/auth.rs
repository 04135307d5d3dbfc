//! Who may change where traffic goes.
//!
//! - On the control socket: the peer's credentials as the kernel recorded
//!   them at `connect()` (`SO_PEERCRED`, `SO_PEERGROUPS`): uid 0, the
//!   daemon's own uid, or a member of `control_group` ([`may_control`]).
//! - On `api_addr`: a bearer token from `api_token_file` ([`Token`]), only
//!   when the operator set one. The token is compared in constant time (as
//!   SHA-256 digests, so its length does not leak either) and never logged,
//!   shown in status or printed in an error.

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::Read as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::guard::Credentials;

/// Shortest accepted token.
pub const MIN_TOKEN_LEN: usize = 16;
/// Largest token file read.
const MAX_TOKEN_FILE: u64 = 4096;

/// Whether the process with `creds` may use the control socket: root, the
/// daemon's own user (`own_uid`), or a member of `group`.
pub fn may_control(creds: &Credentials, own_uid: u32, group: Option<u32>) -> bool {
    creds.uid == 0
        || creds.uid == own_uid
        || group.is_some_and(|gid| creds.gid == gid || creds.groups.contains(&gid))
}

/// The bearer token of `api_token_file`, kept only as its digest.
#[derive(Clone)]
pub struct Token {
    digest: [u8; 32],
    /// The file it came from (for messages).
    pub path: PathBuf,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Reads the token from `path`, which must be a regular file owned by
    /// root (or the daemon's user) that nobody else can read or write.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .with_context(|| format!("api_token_file {}: cannot open it", path.display()))?;
        check_private(&file, path)?;
        let mut text = String::new();
        (&mut file)
            .take(MAX_TOKEN_FILE + 1)
            .read_to_string(&mut text)
            .with_context(|| {
                format!(
                    "api_token_file {}: cannot read it as UTF-8 text",
                    path.display()
                )
            })?;
        if text.len() as u64 > MAX_TOKEN_FILE {
            bail!(
                "api_token_file {}: larger than {MAX_TOKEN_FILE} bytes; it should hold one token",
                path.display()
            );
        }
        Self::from_text(text.trim(), path)
    }

    fn from_text(token: &str, path: &Path) -> anyhow::Result<Self> {
        if token.len() < MIN_TOKEN_LEN {
            bail!(
                "api_token_file {}: the token has {} characters; at least {MIN_TOKEN_LEN} are needed \
                 (e.g. `head -c 32 /dev/urandom | base64 > {}`)",
                path.display(),
                token.len(),
                path.display()
            );
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            bail!(
                "api_token_file {}: the token must be one line of visible ASCII characters \
                 (it travels in an HTTP header)",
                path.display()
            );
        }
        Ok(Self {
            digest: Sha256::digest(token.as_bytes()).into(),
            path: path.to_path_buf(),
        })
    }

    /// Whether `presented` is the token (constant time).
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(self.digest.ct_eq(&digest))
    }
}

/// The file must be a regular file owned by root or us, with no group or
/// other permissions.
fn check_private(file: &File, path: &Path) -> anyhow::Result<()> {
    let meta = file
        .metadata()
        .with_context(|| format!("api_token_file {}: cannot stat it", path.display()))?;
    if !meta.file_type().is_file() {
        bail!("api_token_file {}: not a regular file", path.display());
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != euid {
        bail!(
            "api_token_file {}: owned by uid {}; it must belong to root (chown root {})",
            path.display(),
            meta.uid(),
            path.display()
        );
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        bail!(
            "api_token_file {}: mode {mode:04o} lets other users read or change the token; \
             it must be 0600 or stricter (chmod 600 {})",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt as _};

    use super::*;

    fn creds(uid: u32, gid: u32, groups: &[u32]) -> Credentials {
        Credentials {
            uid,
            gid,
            pid: None,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn root_our_user_and_the_control_group_may_control() {
        assert!(may_control(&creds(0, 0, &[]), 0, None));
        assert!(may_control(&creds(990, 990, &[]), 990, None));
        assert!(!may_control(&creds(65534, 65534, &[]), 0, None));
        assert!(may_control(&creds(1000, 1000, &[27, 44]), 0, Some(44)));
        assert!(may_control(&creds(1000, 44, &[]), 0, Some(44)));
        assert!(!may_control(&creds(1000, 1000, &[27]), 0, Some(44)));
    }

    #[test]
    fn tokens_match_only_themselves() {
        let path = Path::new("/t");
        let token = Token::from_text("correct-horse-battery-staple", path).unwrap();
        assert!(token.matches("correct-horse-battery-staple"));
        assert!(!token.matches("correct-horse-battery-stapl"));
        assert!(!token.matches("correct-horse-battery-staplee"));
        assert!(!token.matches(""));
        assert!(!format!("{token:?}").contains("horse"), "{token:?}");

        let err = Token::from_text("short", path).unwrap_err().to_string();
        assert!(err.contains("has 5 characters; at least 16"), "{err}");
        assert!(!err.contains("short"), "the token leaked into {err}");
        let err = Token::from_text("spaces are not allowed", path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("visible ASCII"), "{err}");
    }

    #[test]
    fn token_files_must_be_private() {
        let dir = std::env::temp_dir().join(format!("daas-lb-token-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        fs::write(&path, "0123456789abcdef0123\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let token = Token::load(&path).unwrap();
        assert!(token.matches("0123456789abcdef0123"));

        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = format!("{:#}", Token::load(&path).unwrap_err());
        assert!(err.contains("mode 0640 lets other users"), "{err}");
        assert!(
            !err.contains("0123456789abcdef"),
            "the token leaked into {err}"
        );

        let link = dir.join("link");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let err = format!("{:#}", Token::load(&link).unwrap_err());
        assert!(err.contains("cannot open it"), "{err}");

        let err = format!("{:#}", Token::load(&dir.join("missing")).unwrap_err());
        assert!(err.contains("missing: cannot open it"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
