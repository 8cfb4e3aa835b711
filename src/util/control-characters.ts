/**
 * Whether `value` holds a control character (U+0000–U+001F, U+007F). In a
 * configuration file (PostgreSQL's, Redis's) a newline or carriage return
 * would start a setting of its own, and NUL would cut the value short.
 */
export function hasControlCharacter(value: string): boolean {
  for (let index = 0; index < value.length; index++) {
    const code = value.charCodeAt(index);
    if (code < 0x20 || code === 0x7f) return true;
  }
  return false;
}
