//! Server-rendered login pages: plain HTML forms that work without JavaScript, labelled for
//! screen readers, styled after the NHS.UK frontend (colours, type scale, focus ring). Every
//! value placed in a page is escaped; secrets are never echoed back.

use sharedcare_kit::auth::RoleProfile;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What NHS.UK frontend has no class for (a code shown to copy, a list of keys), served at
/// [`STYLE_PATH`] beside the vendored NHS.UK frontend sheet (a file, not inline: the pages'
/// Content-Security-Policy allows no inline style).
pub const STYLE: &str = ".sc-code{font-family:monospace;font-size:1.375rem;background:#f0f4f5;padding:8px;\
word-break:break-all}.sc-key-meta{color:#4c6272}";

/// Where [`STYLE`] is served.
pub const STYLE_PATH: &str = "/oauth2/identity.css";

/// Where the vendored NHS.UK frontend is served on identity (its own pod in production).
pub const ASSETS: &str = "/oauth2/assets/";

/// A whole page on NHS.UK frontend: its header with the service name, the width container and
/// the main landmark with `body`. A page whose form came back with an error says so first in
/// its title.
pub fn layout(title: &str, body: &str) -> String {
    let error = if body.contains("nhsuk-error-summary") {
        "Error: "
    } else {
        ""
    };
    format!(
        "<!DOCTYPE html><html lang=\"en-GB\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{error}{} – Shared care record</title>\
         <link rel=\"stylesheet\" href=\"{}\"><link rel=\"stylesheet\" href=\"{STYLE_PATH}\"></head><body>\
         <a class=\"nhsuk-skip-link\" href=\"#maincontent\">Skip to main content</a>\
         <header class=\"nhsuk-header\" role=\"banner\"><div class=\"nhsuk-header__container nhsuk-width-container\">\
         <div class=\"nhsuk-header__service\"><a class=\"nhsuk-header__service-logo\" href=\"/\" \
         aria-label=\"NHS Shared care record homepage\">{}<span class=\"nhsuk-header__service-name\">Shared care record</span></a>\
         </div></div></header><div class=\"nhsuk-width-container\"><main class=\"nhsuk-main-wrapper\" id=\"maincontent\">\
         {body}</main></div></body></html>",
        esc(title),
        sharedcare_kit::nhsuk::path(ASSETS, "nhsuk-frontend.min.css"),
        sharedcare_kit::nhsuk::LOGO,
    )
}

fn error_box(error: &str) -> String {
    if error.is_empty() {
        String::new()
    } else {
        format!(
            "<div class=\"nhsuk-error-summary\" aria-labelledby=\"error-summary-title\" role=\"alert\" tabindex=\"-1\" id=\"error-summary\">\
             <h2 class=\"nhsuk-error-summary__title\" id=\"error-summary-title\">There is a problem</h2>\
             <div class=\"nhsuk-error-summary__body\"><p>{}</p></div></div>",
            esc(error)
        )
    }
}

/// The username + password form, and a button per upstream provider.
pub fn login(
    req: &str,
    csrf: &str,
    client_name: &str,
    username: &str,
    error: &str,
    upstreams: &[(String, String)],
) -> String {
    let mut others = String::new();
    for (name, display) in upstreams {
        others.push_str(&format!(
            "<p><a class=\"nhsuk-button nhsuk-button--secondary\" id=\"upstream-{}\" href=\"/oauth2/broker/{}?req={}\">Continue with {}</a></p>",
            esc(name),
            esc(name),
            esc(req),
            esc(display)
        ));
    }
    let others = if others.is_empty() {
        others
    } else {
        format!("<h2 class=\"nhsuk-heading-m\">Or</h2>{others}")
    };
    layout(
        "Sign in",
        &format!(
            "<h1>Sign in</h1><p class=\"nhsuk-hint\">to continue to {}</p>{}\
             <form method=\"post\" action=\"/oauth2/login\" novalidate>\
             <input type=\"hidden\" name=\"req\" value=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <div class=\"nhsuk-form-group\"><label class=\"nhsuk-label\" for=\"username\">Username</label>\
             <input class=\"nhsuk-input\" type=\"text\" id=\"username\" name=\"username\" autocomplete=\"username\" value=\"{}\" required></div>\
             <div class=\"nhsuk-form-group\"><label class=\"nhsuk-label\" for=\"password\">Password</label>\
             <input class=\"nhsuk-input\" type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required></div>\
             <button class=\"nhsuk-button\" type=\"submit\" id=\"sign-in\">Sign in</button></form>{others}",
            esc(client_name),
            error_box(error),
            esc(req),
            esc(csrf),
            esc(username)
        ),
    )
}

/// The second-factor form (TOTP code or a recovery code), led by a passkey or security key
/// button when the account has one (`keys`).
pub fn otp(req: &str, csrf: &str, error: &str, keys: bool) -> String {
    let key = if keys {
        format!(
            "<div id=\"key-sign-in\"><p>Use the passkey or security key you added to this account.</p>\
             <div class=\"nhsuk-error-message\" role=\"alert\" id=\"key-error\" tabindex=\"-1\" hidden></div>\
             <button class=\"nhsuk-button nhsuk-button--secondary\" type=\"button\" id=\"use-key\" data-req=\"{}\">Use a passkey or security key</button>\
             <p class=\"nhsuk-hint\">Or enter a code instead.</p></div>",
            esc(req)
        )
    } else {
        String::new()
    };
    let script = if keys { SCRIPT_TAG } else { "" };
    layout(
        "Enter your security code",
        &format!(
            "<h1>Confirm it is you</h1>{}{key}<form method=\"post\" action=\"/oauth2/login/otp\" novalidate>\
             <input type=\"hidden\" name=\"req\" value=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label class=\"nhsuk-label\" for=\"code\">6-digit code from your authenticator app, or a recovery code</label>\
             <input class=\"nhsuk-input\" type=\"text\" id=\"code\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required>\
             <button class=\"nhsuk-button\" type=\"submit\" id=\"verify\">Continue</button></form>{script}",
            error_box(error),
            esc(req),
            esc(csrf)
        ),
    )
}

/// The pages' script for passkeys and security keys (a file: the CSP allows no inline script).
const SCRIPT_TAG: &str = "<script src=\"/oauth2/webauthn.js\" defer></script>";

/// The account's passkeys and security keys, and the form to add one. A first second factor
/// needs the administrator's enrolment code (`first`).
pub fn security_keys(csrf: &str, keys: &[crate::store::SecurityKey], first: bool) -> String {
    let when = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .map(|d| d.format("%-d %B %Y").to_string())
            .unwrap_or_default()
    };
    let list = if keys.is_empty() {
        "<p id=\"no-keys\">You have not added a passkey or security key yet.</p>".to_string()
    } else {
        let items: String = keys
            .iter()
            .map(|k| {
                let used = if k.last_used > 0 {
                    format!("last used {}", when(k.last_used))
                } else {
                    "not used yet".into()
                };
                format!(
                    "<li class=\"security-key\"><strong>{}</strong> <span class=\"sc-key-meta\">added {}, {used}</span></li>",
                    esc(&k.name),
                    when(k.created_at)
                )
            })
            .collect();
        format!("<ul class=\"nhsuk-list\" id=\"keys\">{items}</ul>")
    };
    let enrolment = if first {
        "<label class=\"nhsuk-label\" for=\"enrolment_code\">Enrolment code from your administrator</label>\
         <input class=\"nhsuk-input\" type=\"text\" id=\"enrolment_code\" name=\"enrolment_code\" autocomplete=\"off\" required>"
    } else {
        ""
    };
    layout(
        "Passkeys and security keys",
        &format!(
            "<h1>Passkeys and security keys</h1><p>A passkey (on this device or your phone) or a \
             security key can stand in for the code from your authenticator app when you sign in.</p>{list}\
             <div class=\"nhsuk-error-message\" role=\"alert\" id=\"key-error\" tabindex=\"-1\" hidden></div>\
             <form id=\"add-key\" method=\"post\" action=\"/account/security-keys\" novalidate>\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">{enrolment}\
             <label class=\"nhsuk-label\" for=\"key-name\">A name for the key</label>\
             <input class=\"nhsuk-input\" type=\"text\" id=\"key-name\" name=\"name\" maxlength=\"60\" placeholder=\"Work laptop\" required>\
             <button class=\"nhsuk-button\" type=\"submit\" id=\"add-key-button\">Add a passkey or security key</button></form>\
             <noscript><p class=\"nhsuk-error-message\">Adding a key needs JavaScript. Use an authenticator app instead.</p></noscript>\
             <div id=\"recovery\" hidden><h2>Your key is added</h2><p>Keep these recovery codes somewhere safe. \
             Each works once if you lose your key. They will not be shown again.</p><ul class=\"nhsuk-list\" id=\"recovery-codes\"></ul></div>\
             <p class=\"nhsuk-hint\">Or <a href=\"/account/totp\">set up an authenticator app</a>.</p>{SCRIPT_TAG}",
            esc(csrf)
        ),
    )
}

/// Choose one of several role profiles (CIS2's role selection).
pub fn select_role(req: &str, csrf: &str, roles: &[RoleProfile], org_names: &[(String, String)]) -> String {
    let mut items = String::new();
    for (i, r) in roles.iter().enumerate() {
        let org = org_names
            .iter()
            .find(|(c, _)| *c == r.org_code)
            .map(|(_, n)| n.as_str())
            .unwrap_or(&r.org_code);
        items.push_str(&format!(
            "<div class=\"nhsuk-radios__item\"><input class=\"nhsuk-radios__input\" type=\"radio\" id=\"role-{i}\" name=\"role\" value=\"{}\"{}>\
             <label class=\"nhsuk-label nhsuk-radios__label\" for=\"role-{i}\">{} at {} ({})</label></div>",
            esc(&r.person_roleid),
            if i == 0 { " checked" } else { "" },
            esc(&r.role_name),
            esc(org),
            esc(&r.org_code)
        ));
    }
    layout(
        "Select your role",
        &format!(
            "<h1>Select your role</h1><form method=\"post\" action=\"/oauth2/select-role\">\
             <input type=\"hidden\" name=\"req\" value=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <fieldset class=\"nhsuk-fieldset\"><legend class=\"nhsuk-fieldset__legend nhsuk-fieldset__legend--m\">Which role are you working in?</legend><div class=\"nhsuk-radios\">{items}</div></fieldset>\
             <button class=\"nhsuk-button\" type=\"submit\" id=\"continue\">Continue</button></form>",
            esc(req),
            esc(csrf)
        ),
    )
}

/// Enrol an authenticator app: shows the secret, asks for a first code.
pub fn totp_enrol(csrf: &str, secret: &str, uri: &str, error: &str, first: bool) -> String {
    // A first authenticator needs the one-time enrolment code an administrator issued.
    let enrolment = if first {
        "<label class=\"nhsuk-label\" for=\"enrolment_code\">Enrolment code from your administrator</label>\
         <input class=\"nhsuk-input\" type=\"text\" id=\"enrolment_code\" name=\"enrolment_code\" autocomplete=\"off\" required>"
    } else {
        ""
    };
    layout(
        "Set up your authenticator app",
        &format!(
            "<h1>Set up your authenticator app</h1>{}<p>Add this key to your authenticator app, \
             then enter the 6-digit code it shows.</p><p class=\"sc-code\" id=\"totp-secret\">{}</p>\
             <p class=\"nhsuk-hint\">Or open: <a id=\"otpauth\" href=\"{}\">authenticator link</a></p>\
             <form method=\"post\" action=\"/account/totp\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"secret\" value=\"{}\">\
             {enrolment}<label class=\"nhsuk-label\" for=\"code\">Code from your app</label>\
             <input class=\"nhsuk-input\" type=\"text\" id=\"code\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required>\
             <button class=\"nhsuk-button\" type=\"submit\" id=\"enrol\">Turn on</button></form>\
             <p class=\"nhsuk-hint\">Or <a href=\"/account/security-keys\">use a passkey or security key</a>.</p>",
            error_box(error),
            esc(secret),
            esc(uri),
            esc(csrf),
            esc(secret)
        ),
    )
}

/// Recovery codes, shown once after enrolment.
pub fn recovery_codes(codes: &[String]) -> String {
    let list: String = codes
        .iter()
        .map(|c| format!("<li class=\"sc-code\">{}</li>", esc(c)))
        .collect();
    layout(
        "Save your recovery codes",
        &format!(
            "<h1>Two-step sign in is on</h1><p>Keep these recovery codes somewhere safe. Each works once \
             if you lose your authenticator app. They will not be shown again.</p><ul class=\"nhsuk-list\" id=\"recovery-codes\">{list}</ul>"
        ),
    )
}

/// A page that explains an error; `message` must not contain secrets.
pub fn error(title: &str, message: &str) -> String {
    layout(
        title,
        &format!("<h1>{}</h1><p id=\"message\">{}</p>", esc(title), esc(message)),
    )
}

/// After logout.
pub fn signed_out() -> String {
    layout(
        "You have signed out",
        "<h1>You have signed out</h1><p>You have been signed out of every app that used this sign-in.</p>",
    )
}
