// What the console keeps in this browser (localStorage): saved deploy files and the launch history.

const CONFIGS = 'autoglm.console.configs';
const LAUNCHES = 'autoglm.console.launches';
const DRAFT = 'autoglm.console.draft';
const MAX_LAUNCHES = 50;

function read(key, fallback) {
  try {
    const v = JSON.parse(localStorage.getItem(key));
    return v ?? fallback;
  } catch {
    return fallback;
  }
}

function write(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch { /* storage full or disabled: the console still works, it just forgets */ }
}

export const savedConfigs = () => read(CONFIGS, {});
export function saveConfig(name, text) {
  write(CONFIGS, { ...savedConfigs(), [name]: { text, saved_at: Date.now() } });
}
export function deleteConfig(name) {
  const all = savedConfigs();
  delete all[name];
  write(CONFIGS, all);
}

export const launches = () => read(LAUNCHES, []);
export function recordLaunch(entry) {
  write(LAUNCHES, [{ at: Date.now(), ...entry }, ...launches()].slice(0, MAX_LAUNCHES));
}

export const draft = () => read(DRAFT, null);
export const saveDraft = (text) => write(DRAFT, text);
