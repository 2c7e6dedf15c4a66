//! Building the engine from the configuration: rules and templates loaded
//! and checked to fit together, every template rendered against a sample
//! case. `check`, `serve` and every reload go through here.

use chrono::{DateTime, Utc};

use crate::channels::email::Mailer;
use crate::channels::sms::Texter;
use crate::config::Config;
use crate::domain::clock::SharedIds;
use crate::domain::{
    Case, CaseInput, Channel, CustomerInput, Diagnostic, Diagnostics, Priority, Status,
};
use crate::engine::plan::{ConsentKeys, Engine};
use crate::engine::render::{MessageContext, Templates};
use crate::engine::rules::RuleSet;
use crate::store::Storage;

/// Loads rules and templates and checks that they fit together: every
/// template a rule names exists, and every template renders.
pub fn build_engine(
    config: &Config,
    ids: SharedIds,
    now: DateTime<Utc>,
) -> Result<Engine, Diagnostics> {
    let rules = RuleSet::load_dir(&config.rules_dir);
    let templates = Templates::load(&config.templates_dir, config.default_locale.clone());
    let (rules, templates) = match (rules, templates) {
        (Ok(r), Ok(t)) => (r, t),
        (r, t) => {
            let mut all = Vec::new();
            if let Err(Diagnostics(d)) = r {
                all.extend(d);
            }
            if let Err(Diagnostics(d)) = t {
                all.extend(d);
            }
            return Err(Diagnostics(all));
        }
    };
    let mut errors = Vec::new();
    let mut channels = vec![Channel::Email, Channel::Sms];
    if config.whatsapp.is_some() {
        channels.push(Channel::WhatsApp);
    }
    let mut need = |template: &str, origin: &crate::engine::rules::Origin, chans: &[Channel]| {
        for c in chans {
            // A WhatsApp message's body may come from the SMS template.
            let has = templates.has(template, *c)
                || (*c == Channel::WhatsApp && templates.has(template, Channel::Sms));
            if channels.contains(c) && !has {
                errors.push(origin.diagnostic(format!(
                    "template `{template}` has no {}.{}.j2 in {}",
                    template,
                    c.as_str(),
                    templates.dir().display()
                )));
            }
        }
    };
    for r in &rules.rules {
        need(&r.template, &r.origin, &r.channels);
        if let Some(e) = &r.escalate {
            need(&e.template, &r.origin, &[Channel::Email]);
        }
    }
    for on in rules.on.values() {
        need(&on.template, &on.origin, &on.channels);
    }
    errors.extend(templates.check(&sample_context(config, now)));
    errors.extend(
        templates.check_pages(&crate::engine::page::samples(sample_case(config, now), now)),
    );
    if !errors.is_empty() {
        return Err(Diagnostics(errors));
    }
    Ok(Engine {
        rules,
        templates,
        company: config.company.clone(),
        public_url: config.public_url.clone(),
        message_id_domain: config.email.from.email.domain().to_owned(),
        reply_to: config.email.reply_to.clone(),
        channels,
        email_quiet: config.email.quiet_hours,
        sms_quiet: config.sms.quiet_hours,
        whatsapp_quiet: config.whatsapp.as_ref().and_then(|w| w.quiet_hours),
        max_segments: config.sms.max_segments,
        consent: ConsentKeys {
            salt: [0; 32],
            unsubscribe_key: config.consent.secret.clone().unwrap_or_default(),
            previous_key: config.consent.previous_secret.clone().unwrap_or_default(),
            link_valid_after_close: config.consent.link_valid_after_close,
        },
        ids,
    })
}

/// Contacts are keyed under the store's own salt; unsubscribe links are
/// signed with the configured secret, else with the store's own key.
pub fn with_store_keys(engine: &mut Engine, store: &dyn Storage) {
    engine.consent.salt = store.contact_salt();
    if engine.consent.unsubscribe_key.is_empty() {
        engine.consent.unsubscribe_key = store.generated_unsubscribe_key().to_vec();
    }
}

/// A realistic case with every field filled, for template checks.
fn sample_case(config: &Config, now: DateTime<Utc>) -> Case {
    let input = CaseInput {
        subject: "Replacement router has not shipped".into(),
        status: Status::Open,
        priority: Priority::High,
        customer: CustomerInput {
            name: "Maria Hernandez".into(),
            email: Some("maria.hernandez@example.com".into()),
            phone: Some("+12125550143".into()),
            timezone: Some("America/New_York".into()),
            locale: Some("en".into()),
            channels: None,
        },
        cc: Vec::new(),
        assignee: Some("Jordan".into()),
        eta: Some(now + chrono::Duration::days(3)),
        tags: vec!["hardware".into()],
        fields: [("order".to_owned(), serde_json::json!("RMA-20931"))].into(),
    };
    let mut case: Case = input
        .into_case(
            "CASE-1"
                .parse()
                .unwrap_or_else(|_| unreachable!("valid id")),
            "sample",
            &config.defaults(),
            now,
            None,
        )
        .unwrap_or_else(|e| unreachable!("the sample case is valid: {e}"));
    case.latest_note = Some(crate::domain::Note {
        body: "The courier picked up the replacement this morning.".into(),
        author: Some("Jordan".into()),
        at: now,
    });
    case
}

/// The variables of a message about the sample case.
fn sample_context(config: &Config, now: DateTime<Utc>) -> MessageContext {
    let case = sample_case(config, now);
    MessageContext::new(
        &case,
        Some(now + chrono::Duration::hours(4)),
        now,
        &config.company,
        format!("{}/unsubscribe/sample", config.public_url),
    )
}

/// `tidings check`: everything `serve` would validate, nothing started.
/// Returns the engine it built and warnings: SMS templates that can run
/// over the segment budget with long inputs (rendering shortens those at
/// send time).
pub fn check(
    config: &Config,
    ids: SharedIds,
    now: DateTime<Utc>,
) -> Result<(Engine, Vec<Diagnostic>), Diagnostics> {
    let engine = build_engine(config, ids, now)?;
    if let Err(e) = Mailer::new(&config.email.transport, &config.email.from) {
        return Err(Diagnostic::new(&config.path, 1, 1, e).into());
    }
    if let Err(e) = Texter::new(
        &config.sms.transport,
        config.sms.twilio.as_ref(),
        &config.public_url,
    ) {
        return Err(Diagnostic::new(&config.path, 1, 1, e).into());
    }
    let mut warnings = engine
        .templates
        .sms_over_budget(&long_context(config, now), config.sms.max_segments);
    if let Some(w) = &config.whatsapp {
        if let Err(e) =
            Texter::whatsapp(&w.transport, config.sms.twilio.as_ref(), &config.public_url)
        {
            return Err(Diagnostic::new(&config.path, 1, 1, e).into());
        }
        warnings.extend(without_approved_template(&engine, config, now));
    }
    Ok((engine, warnings))
}

/// A warning for each rule and event message that sends on WhatsApp with
/// a template naming no approved one (in the default locale): outside the
/// 24-hour window those messages go on the customer's next channel.
fn without_approved_template(
    engine: &Engine,
    config: &Config,
    now: DateTime<Utc>,
) -> Vec<Diagnostic> {
    let ctx = sample_context(config, now);
    let on = engine
        .rules
        .on
        .values()
        .map(|o| (&o.template, &o.channels, &o.origin));
    engine
        .rules
        .rules
        .iter()
        .map(|r| (&r.template, &r.channels, &r.origin))
        .chain(on)
        .filter(|(_, channels, _)| channels.contains(&Channel::WhatsApp))
        .filter(|(template, _, _)| {
            engine
                .templates
                .render_whatsapp(template, &config.default_locale, &ctx)
                .is_ok_and(|parts| parts.template.is_none())
        })
        .map(|(template, _, origin)| {
            origin.diagnostic(format!(
                "warning: `{template}` names no approved WhatsApp template (a content_sid block in {template}.whatsapp.j2): outside the 24-hour window its messages go on the customer's next channel"
            ))
        })
        .collect()
}

/// The sample case with the longest inputs a ticket system realistically
/// sends: a long name, subject and note.
fn long_context(config: &Config, now: DateTime<Utc>) -> MessageContext {
    let mut ctx = sample_context(config, now);
    ctx.customer.name = "Maria Guadalupe Hernandez-Villanueva de la Cruz".into();
    ctx.customer.first_name = "Maria Guadalupe".into();
    ctx.case.subject = "Replacement router for the branch office has not shipped although the order was confirmed two weeks ago".into();
    ctx.case.latest_note = Some("The courier picked up the replacement this morning and it is now on its way to the depot; \
we will confirm the delivery window as soon as the carrier shares it with us. Thank you for your patience."
        .into());
    ctx.cases = vec![ctx.case.clone(), ctx.case.clone(), ctx.case.clone()];
    ctx
}
