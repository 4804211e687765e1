// The page's root element, and the one way this dashboard makes DOM nodes: createElement with textContent.

export const root = document.getElementById("atc");
export const $ = (id) => document.getElementById(id);

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}
