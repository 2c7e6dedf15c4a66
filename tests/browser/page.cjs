// The customer's case page in a real browser: Debian's chromium driven by
// Playwright. For each locale it opens the link taken from a delivered
// email, checks the promise line, works every form on the page, and runs
// axe-core on each state it reaches; then the unsubscribe confirmation,
// and refused links. One screenshot per locale (360 px wide) goes to the
// output folder with report.json.
//
// Input (TIDINGS_BROWSER_INPUT, JSON): { out, pause_until, locales: [{
//   locale, page, promise, unsubscribe }], refused: [{ state, url, locale,
//   accept, fresh }] }; `accept` is the browser's Accept-Language, `fresh`
//   asks for a fresh link on an expired page.
// Exit 1 on a serious or critical axe violation or a failed check.
'use strict';

const path = require('path');
const fs = require('fs');

const modules = process.env.TIDINGS_BROWSER_MODULES ||
  path.join(__dirname, '..', '..', 'target', 'browser', 'node_modules');
const { chromium } = require(path.join(modules, 'playwright-core'));
const axePath = path.join(modules, 'axe-core', 'axe.min.js');

const input = JSON.parse(process.env.TIDINGS_BROWSER_INPUT);
const report = { states: [], failures: [] };

function fail(msg) {
  report.failures.push(msg);
  console.error('FAIL ' + msg);
}

async function audit(page, locale, state) {
  // The page's CSP forbids scripts; the context bypasses it for axe only.
  await page.addScriptTag({ path: axePath });
  const result = await page.evaluate(async () =>
    // eslint-disable-next-line no-undef
    await axe.run(document, { resultTypes: ['violations'] }));
  const violations = result.violations.map((v) => ({
    id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help,
  }));
  const bad = violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  report.states.push({ locale, state, url: page.url().replace(/\/c\/[^/?]+/, '/c/…'), violations });
  console.log(`${locale} ${state}: ${violations.length} violations, ${bad.length} serious or critical`);
  for (const v of bad) fail(`${locale} ${state}: ${v.impact} ${v.id} (${v.help})`);
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  if (width > 360) fail(`${locale} ${state}: ${width} px wide on a 360 px screen`);
}

async function submit(page, action) {
  const form = page.locator(`form:has(input[name="action"][value="${action}"])`);
  const [resp] = await Promise.all([page.waitForNavigation(), form.locator('button').click()]);
  if (!resp || resp.status() !== 200) {
    fail(`${action}: answered ${resp && resp.status()}: ${resp && (await resp.text()).slice(0, 200)}`);
  }
}

async function expectText(page, locale, state, text) {
  const body = await page.textContent('body');
  if (!body.includes(text)) fail(`${locale} ${state}: "${text}" not on the page`);
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.TIDINGS_CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox'],
  });
  const context = await browser.newContext({
    bypassCSP: true,
    viewport: { width: 360, height: 740 },
    deviceScaleFactor: 1,
  });
  const outside = [];
  context.on('request', (r) => {
    const u = new URL(r.url());
    if (!['127.0.0.1', 'localhost'].includes(u.hostname)) outside.push(r.url());
  });
  const page = await context.newPage();
  for (const l of input.locales) {
    const resp = await page.goto(l.page);
    if (resp.status() !== 200) fail(`${l.locale}: page answered ${resp.status()}`);
    await expectText(page, l.locale, 'initial', l.promise);
    await audit(page, l.locale, 'initial');
    await page.screenshot({ path: path.join(input.out, `page-${l.locale}.png`), fullPage: true });

    // SMS off for this case.
    await page.uncheck('input[name="channel"][value="sms"]');
    await submit(page, 'channels');
    await audit(page, l.locale, 'channels saved');
    if (await page.isChecked('input[name="channel"][value="sms"]')) fail(`${l.locale}: SMS still chosen`);

    await page.fill('#until', input.pause_until);
    await submit(page, 'pause');
    await audit(page, l.locale, 'paused');
    await submit(page, 'resume');
    await audit(page, l.locale, 'resumed');
    await submit(page, 'stop');
    await audit(page, l.locale, 'stopped');
    await submit(page, 'stop_source');
    await audit(page, l.locale, 'source stopped');
    await page.screenshot({ path: path.join(input.out, `page-${l.locale}-stopped.png`), fullPage: true });

    // Pages that name no customer follow the browser's language.
    await page.setExtraHTTPHeaders({ 'accept-language': l.locale });
    await page.goto(l.unsubscribe);
    await audit(page, l.locale, 'unsubscribe confirmation');
    await Promise.all([page.waitForNavigation(), page.locator('form button').click()]);
    await audit(page, l.locale, 'unsubscribed');
    await page.setExtraHTTPHeaders({});
  }
  for (const r of input.refused) {
    await page.setExtraHTTPHeaders(r.accept ? { 'accept-language': r.accept } : {});
    const resp = await page.goto(r.url);
    report.states.push({ state: r.state, status: resp.status() });
    const lang = await page.getAttribute('html', 'lang');
    if (r.locale && lang !== r.locale) fail(`${r.state}: page in ${lang}, not ${r.locale}`);
    await audit(page, r.locale || 'en', r.state);
    if (r.fresh) {
      // The expired page's one form: a fresh link by email.
      await submit(page, 'fresh');
      await audit(page, r.locale || 'en', 'fresh link sent');
    }
  }
  if (outside.length) fail(`requests to third parties: ${outside.join(', ')}`);
  await browser.close();
  fs.writeFileSync(path.join(input.out, input.report || 'report.json'), JSON.stringify(report, null, 2));
  process.exit(report.failures.length ? 1 : 0);
})().catch((e) => {
  console.error(e);
  process.exit(2);
});
